-- Named queries of client webhook delivery.

-- name: claim_webhook_deliveries
-- With the job's trace context: each attempt's span joins the job's trace.
SELECT d.*, j.traceparent
FROM claim_webhook_deliveries($1, $2, make_interval(secs => $3)) AS d
JOIN jobs j ON j.id = d.job_id;

-- name: next_webhook_due
SELECT min(next_attempt_at) FROM webhook_deliveries WHERE next_attempt_at IS NOT NULL;

-- name: record_webhook_attempt
SELECT record_webhook_attempt($1, $2, $3, $4, $5, $6, $7, $8);

-- name: list_webhook_deliveries
-- The job's ($1) deliveries, or only the one of event $2 when it is not null.
SELECT d.id, d.event_id, d.event_type, d.url, d.state, d.attempts, d.next_attempt_at,
       d.last_error, d.created_at, d.finished_at,
       coalesce(
           (SELECT jsonb_agg(jsonb_build_object(
                       'attempt', a.attempt, 'started_at', a.started_at,
                       'duration_ms', a.duration_ms, 'status_code', a.status_code,
                       'error', a.error) ORDER BY a.attempt)
            FROM webhook_attempts a WHERE a.delivery_id = d.id),
           '[]'::jsonb) AS attempt_log
FROM webhook_deliveries d
WHERE d.job_id = $1 AND ($2::bigint IS NULL OR d.event_id = $2)
ORDER BY d.id;

-- name: webhook_backlog
-- Pending deliveries (due, leased or waiting for a retry: exactly those with a next attempt)
-- and how long the most overdue one has been due; both from webhook_deliveries_due_idx alone.
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM greatest(clock_timestamp() - min(next_attempt_at),
                                            interval '0')), 0)::double precision AS overdue_s
FROM webhook_deliveries
WHERE next_attempt_at IS NOT NULL;

-- name: release_webhook_leases
-- Graceful shutdown: the deliveries $1 still holds (lease at most $2 seconds ahead) are due
-- now, and every instance's deliverer is woken.
WITH released AS (
    UPDATE webhook_deliveries SET lease_owner = NULL, next_attempt_at = now()
    WHERE next_attempt_at > now() AND next_attempt_at <= now() + make_interval(secs => $2)
      AND lease_owner = $1 AND state = 'pending'
    RETURNING 1
), counted AS (SELECT count(*) AS released FROM released)
SELECT counted.released
FROM counted LEFT JOIN LATERAL (
    SELECT pg_notify('webhook_deliveries', '') WHERE counted.released > 0) AS woken ON true;

-- Recovery (POST /v1/jobs/{id}/webhooks/{webhook_id}/retry, POST /v1/webhooks/recover,
-- `python -m service webhooks recover`): a finished delivery is made pending and due now, with
-- the same event (webhook-id) and job snapshot (payload). It keeps its finished_at: a pending
-- delivery with finished_at set is a requeued one, given exactly one more attempt (the
-- deliverer records it delivered, stopped or failed, never "retry"). Lock order as everywhere:
-- the job rows first (in id order), then the deliveries, then the event-order lock
-- (record_job_event), so recovery cannot deadlock with delivery or the event log.

-- name: lock_job_for_webhooks
SELECT id FROM jobs WHERE id = $1 FOR UPDATE;

-- name: requeue_webhook_delivery
-- One delivery of the job ($1) by event id ($2) made due now, unless an attempt is under way
-- (leased and its lease not over). `outcome`: requeued | in_flight. No row: no such delivery,
-- or a deliverer holds its row right now (claiming it, or recording an attempt, which may then
-- lock the job this transaction holds: so never wait for it), told apart by
-- webhook_delivery_exists.
WITH target AS (
    SELECT id, state,
           state = 'pending' AND lease_owner IS NOT NULL
               AND next_attempt_at > clock_timestamp() AS in_flight
    FROM webhook_deliveries
    WHERE job_id = $1 AND event_id = $2
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE webhook_deliveries d
    SET state = 'pending', next_attempt_at = clock_timestamp(), lease_owner = NULL
    FROM target t
    WHERE d.id = t.id AND NOT t.in_flight
    RETURNING d.id
)
SELECT t.id, t.state AS previous_state,
       CASE WHEN t.in_flight THEN 'in_flight' ELSE 'requeued' END AS outcome
FROM target t;

-- name: webhook_delivery_exists
SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE job_id = $1 AND event_id = $2);

-- name: lock_jobs_with_failed_webhooks
-- The jobs having a delivery that ended failed at or after $1, locked in id order.
SELECT id FROM jobs
WHERE id IN (SELECT job_id FROM webhook_deliveries WHERE state = 'failed' AND finished_at >= $1)
ORDER BY id
FOR UPDATE;

-- name: requeue_failed_webhook_deliveries
-- Every delivery of the locked jobs ($2) that ended failed at or after $1, made due now.
UPDATE webhook_deliveries
SET state = 'pending', next_attempt_at = clock_timestamp(), lease_owner = NULL
WHERE state = 'failed' AND finished_at >= $1 AND job_id = ANY($2::text[])
RETURNING id, job_id, event_id, event_type, finished_at;

-- name: record_job_events
-- Several fact events at once (record_job_event), in the order given.
SELECT record_job_event(job_id, type, source, data)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]::jsonb[])
     WITH ORDINALITY AS e(job_id, type, source, data, n)
ORDER BY n;

-- name: notify_webhooks_due
-- Wakes every instance's deliverer (sent at commit).
SELECT pg_notify('webhook_deliveries', '');
