-- Named queries of client webhook delivery.

-- name: claim_webhook_deliveries
SELECT * FROM claim_webhook_deliveries($1, $2, make_interval(secs => $3));

-- name: next_webhook_due
SELECT min(next_attempt_at) FROM webhook_deliveries WHERE next_attempt_at IS NOT NULL;

-- name: record_webhook_attempt
SELECT record_webhook_attempt($1, $2, $3, $4, $5, $6, $7, $8);

-- name: list_webhook_deliveries
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
WHERE d.job_id = $1
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
