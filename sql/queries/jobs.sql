-- Named queries, loaded once at start by service.db.queries. "-- name: x" starts query x.

-- name: request_cancel
SELECT outcome, (job).*, CASE WHEN (job).route IS NOT NULL THEN job_attempts_json((job).id) END AS attempts
FROM request_cancel($1);

-- name: get_job
-- A routed job with its attempts (job_attempts_json); a direct job's `attempts` is NULL.
SELECT *, CASE WHEN route IS NOT NULL THEN job_attempts_json(id) END AS attempts
FROM jobs WHERE id = $1;

-- name: list_jobs
-- Newest first; job ids sort by creation time, so the cursor is the last id returned.
-- $5 (the search) finds the job with that id, or jobs whose metadata has a key or a scalar
-- value (at any depth) containing it, case-insensitively: $6 is $5 as an escaped ILIKE
-- pattern. Scalars are compared as their text (strings unquoted, numbers and booleans as JSON
-- writes them), so a search never matches JSON punctuation; no index: operators' searches.
SELECT *, CASE WHEN route IS NOT NULL THEN job_attempts_json(id) END AS attempts
FROM jobs
WHERE ($1::text IS NULL OR provider = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR id < $3)
  AND ($5::text IS NULL OR id = $5 OR EXISTS (
        SELECT 1 FROM jsonb_path_query(metadata, 'strict $.**') AS node(value)
        WHERE CASE jsonb_typeof(node.value)
                WHEN 'object' THEN EXISTS (
                  SELECT 1 FROM jsonb_object_keys(node.value) AS key WHERE key ILIKE $6)
                WHEN 'array' THEN false
                ELSE node.value #>> '{}' ILIKE $6
              END))
ORDER BY id DESC
LIMIT $4;

-- name: list_events
-- With each event's seal (prev_hash, hash: null until the sealer reaches it).
SELECT e.*, s.prev_hash, s.hash
FROM job_events e LEFT JOIN event_seals s ON s.event_id = e.id
WHERE e.job_id = $1 ORDER BY e.seq;

-- name: job_exists
SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1);

-- name: claim_due_jobs
SELECT * FROM claim_due_jobs($1, $2, make_interval(secs => $3));

-- name: next_due_at
SELECT min(next_action_at) FROM jobs WHERE next_action_at IS NOT NULL;

-- name: reschedule_job
SELECT reschedule_job($1, $2, $3, $4, $5, $6, $7);

-- name: record_cancel_sent
SELECT record_cancel_sent($1, $2, $3, $4, $5);

-- name: record_job_event
SELECT record_job_event($1, $2, $3, $4);

-- name: completion_seconds
SELECT samples, p10, p95 FROM completion_seconds($1, $2);

-- name: apply_observations
SELECT ord, applied, event_id
-- JSON values come as text: asyncpg would read a list inside jsonb[] as another dimension.
FROM apply_observations($1::text[], $2::text[], $3::text[], $4::text[]::jsonb[], $5::text[],
                        $6::text[]::jsonb[], $7::text[]::jsonb[], $8::boolean[],
                        $9::text[]::jsonb[], $10::timestamptz[], $11::text[]);

-- name: get_jobs
SELECT * FROM jobs WHERE id = ANY($1::text[]);

-- name: create_jobs
SELECT ord, created, (job).*
FROM create_jobs($1::text[], $2::text[], $3::text[], $4::text[]::jsonb[], $5::text[]::jsonb[],
                 $6::text[], $7::text[], $8::text[], $9::float8[], $10::text[]);

-- name: begin_submissions
SELECT ord, outcome FROM begin_submissions($1::text[], $2, $3::text[], $4::text[]::jsonb[]);

-- name: create_routed_job
SELECT created, (job).*, job_attempts_json((job).id) AS attempts
FROM create_routed_job($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, make_interval(secs => $13),
                       $14);

-- name: fail_over_attempt
SELECT fail_over_attempt($1, $2, $3, $4, $5, $6, $7, $8, $9, make_interval(secs => $10));

-- name: superseded_attempt
-- The earlier attempt of a routed job whose callback token this is (NULL: none).
SELECT n FROM job_attempts
WHERE job_id = $1 AND provider = $2 AND callback_token_hash = $3
  AND n < (SELECT attempt FROM jobs WHERE id = $1);

-- name: record_submission_unknown
SELECT record_submission_unknown($1, $2, $3, $4);

-- name: resend_unsent_submission
SELECT resend_unsent_submission($1, $2, $3);

-- name: bind_listed_submission
SELECT bind_listed_submission($1, $2, $3, $4, $5, $6);

-- name: bound_provider_job_ids
-- Which of these provider job ids are bound to one of our jobs.
SELECT provider_job_id FROM jobs WHERE provider = $1 AND provider_job_id = ANY($2::text[]);

-- name: live_jobs_by_status
-- The metrics' jobs{status, provider}: non-terminal jobs only, whose number is bounded by the
-- work in flight (terminal ones grow without bound and are not counted here). The status list
-- is literal so that the planner ranges over jobs_status_id_idx for these statuses alone.
SELECT status, provider, count(*) AS jobs,
       extract(epoch FROM clock_timestamp() - min(created_at))::double precision AS oldest_s
FROM jobs
WHERE status IN ('accepted', 'submitted', 'queued', 'running')
GROUP BY status, provider;

-- name: release_job_leases
-- Graceful shutdown: the jobs $1 still holds (its lease is at most $2 seconds ahead) are
-- given back, due now, and every instance's runner is woken. Only the lease and the due time
-- change: a started submission stays as it is (the unknown-outcome logic settles it).
WITH released AS (
    UPDATE jobs SET lease_owner = NULL, next_action_at = now()
    WHERE next_action_at > now() AND next_action_at <= now() + make_interval(secs => $2)
      AND lease_owner = $1 AND NOT job_status_is_terminal(status)
    RETURNING 1
), counted AS (SELECT count(*) AS released FROM released)
SELECT counted.released
FROM counted LEFT JOIN LATERAL (
    SELECT pg_notify('jobs_due', '') WHERE counted.released > 0) AS woken ON true;
