-- Named queries of the output archive.

-- name: claim_output_archives
-- With the job's stored trace context, so that each attempt joins the job's trace.
SELECT c.*, j.traceparent
FROM claim_output_archives($1, $2, make_interval(secs => $3)) c
JOIN jobs j ON j.id = c.job_id;

-- name: next_output_archive_due
SELECT min(next_attempt_at) FROM output_archives WHERE next_attempt_at IS NOT NULL;

-- name: record_output_archived
SELECT recorded, all_archived FROM record_output_archived($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: record_output_attempt_failed
SELECT record_output_attempt_failed($1, $2, $3, $4, $5, $6);

-- name: get_output_archive
-- One output of a job as the API serves it: whether the job has that output, and its archive.
SELECT j.outputs -> $2::integer IS NOT NULL AS exists,
       a.state, a.storage_key, a.sha256, a.bytes, a.content_type
FROM jobs j
LEFT JOIN output_archives a ON a.job_id = j.id AND a.output_index = $2::integer
WHERE j.id = $1;

-- name: output_archive_backlog
SELECT count(*) FROM output_archives WHERE state = 'pending';

-- name: release_output_archive_leases
-- Graceful shutdown: the outputs $1 still holds (lease at most $2 seconds ahead) are due now,
-- and every instance's archiver is woken. The interrupted attempt stays counted.
WITH released AS (
    UPDATE output_archives SET lease_owner = NULL, next_attempt_at = now()
    WHERE next_attempt_at > now() AND next_attempt_at <= now() + make_interval(secs => $2)
      AND lease_owner = $1 AND state = 'pending'
    RETURNING 1
), counted AS (SELECT count(*) AS released FROM released)
SELECT counted.released
FROM counted LEFT JOIN LATERAL (
    SELECT pg_notify('output_archives', '') WHERE counted.released > 0) AS woken ON true;
