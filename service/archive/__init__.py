"""Archived outputs: each succeeded job's outputs copied into the output store before the
providers' URLs expire, recorded in the job, served at /v1/jobs/{id}/outputs/{index}."""
