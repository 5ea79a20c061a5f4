"""Each provider's API over raw HTTP, behind one interface, for the tests that run the same
fault on all three simulators (submit modes, content refusals, silence, the concurrency limit).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from simulators import RunningSimulators
from simulators.scenario import ScenarioJob

PROVIDERS = ("krea", "fal", "scenario")
# The providers that send webhooks (Scenario is polled).
WEBHOOK_PROVIDERS = ("krea", "fal")

KREA_MODEL = "bfl/flux-1-dev"
FAL_APP = "fal-ai/flux/krea"
FAL_BASE = "fal-ai/flux"  # status, result and cancel URLs carry owner/alias only
SCENARIO_MODEL = "model_flux-krea-dev"


@dataclass
class ProviderApi:
    """Submit, read and cancel on one simulator with its own paths, auth and job ids."""

    provider: str
    sims: RunningSimulators
    http: httpx.AsyncClient

    @property
    def root(self) -> str:
        """Base of the provider's API (Scenario's includes `/v1`)."""
        return (
            self.sims.scenario_url
            if self.provider == "scenario"
            else self.sims.roots[self.provider]
        )

    @property
    def auth(self) -> dict[str, Any]:
        """The keyword arguments that authenticate an httpx request."""
        if self.provider == "krea":
            return {"headers": {"Authorization": f"Bearer {self.sims.krea_token}"}}
        if self.provider == "fal":
            return {"headers": {"Authorization": f"Key {self.sims.fal_key}"}}
        return {"auth": (self.sims.scenario_api_key, self.sims.scenario_api_secret)}

    async def submit(self, prompt: str, *, webhook: str | None = None) -> httpx.Response:
        """One generation request (with a webhook URL where the provider takes one)."""
        body = {"prompt": prompt}
        if self.provider == "krea":
            headers = dict(self.auth["headers"])
            if webhook is not None:
                headers["X-Webhook-URL"] = webhook
            return await self.http.post(
                f"{self.root}/generate/image/{KREA_MODEL}", json=body, headers=headers
            )
        if self.provider == "fal":
            params = {"fal_webhook": webhook} if webhook is not None else None
            return await self.http.post(
                f"{self.root}/{FAL_APP}", json=body, params=params, **self.auth
            )
        assert webhook is None, "Scenario sends no webhooks"
        return await self.http.post(
            f"{self.root}/generate/custom/{SCENARIO_MODEL}", json=body, **self.auth
        )

    def job_id(self, submitted: httpx.Response) -> str:
        """The id of the job a successful submit created."""
        body = submitted.json()
        key = {"krea": "job_id", "fal": "request_id"}.get(self.provider)
        job_id: str = body[key] if key else body["job"]["jobId"]
        return job_id

    async def created(self, prompt: str, *, webhook: str | None = None) -> str:
        """Submit and return the new job's id (the submit must succeed)."""
        submitted = await self.submit(prompt, webhook=webhook)
        assert submitted.status_code == 200, submitted.text
        return self.job_id(submitted)

    async def status(self, job_id: str, **options: Any) -> httpx.Response:
        """The job's status request (fal's `status_url`, the others' `GET /jobs/{id}`)."""
        return await self.http.get(self._status_url(job_id), **self.auth, **options)

    def _status_url(self, job_id: str) -> str:
        if self.provider == "fal":
            return f"{self.root}/{FAL_BASE}/requests/{job_id}/status"
        return f"{self.root}/jobs/{job_id}"

    async def cancel(self, job_id: str) -> httpx.Response:
        if self.provider == "krea":
            return await self.http.delete(f"{self.root}/jobs/{job_id}", **self.auth)
        if self.provider == "fal":
            return await self.http.put(
                f"{self.root}/{FAL_BASE}/requests/{job_id}/cancel", **self.auth
            )
        return await self.http.post(
            f"{self.root}/jobs/{job_id}/action", json={"action": "cancel"}, **self.auth
        )

    def reads(self, job_id: str) -> dict[str, Callable[[], Awaitable[httpx.Response]]]:
        """Every read request the provider has for a job, by name: status, result, list and
        (Scenario) the asset, (fal) the status stream."""
        get = self.http.get
        if self.provider == "fal":
            result_url = f"{self.root}/{FAL_BASE}/requests/{job_id}"
            return {
                "status": lambda: self.status(job_id),
                "status stream": lambda: get(f"{self._status_url(job_id)}/stream", **self.auth),
                "result": lambda: get(result_url, **self.auth),
            }
        reads = {
            "status": lambda: self.status(job_id),
            "list": lambda: get(f"{self.root}/jobs", **self.auth),
        }
        if self.provider == "scenario":
            job = self.sims.scenario.jobs[job_id]
            assert isinstance(job, ScenarioJob)
            asset_url = f"{self.root}/assets/{job.asset_ids[0]}"
            reads["asset"] = lambda: get(asset_url, **self.auth)
        return reads


def status_name(provider: str, body: dict[str, Any]) -> str:
    """The provider's status name in a status answer (Scenario's is inside `job`)."""
    status: str = body["job"]["status"] if provider == "scenario" else body["status"]
    return status
