-- Named queries of the event stream.

-- name: events_after
-- A page of the log after a resume point, in commit order (ids grow in commit order).
SELECT * FROM job_events WHERE id > $1 ORDER BY id LIMIT $2;

-- name: job_events_after
SELECT * FROM job_events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3;

-- name: last_event_id
SELECT coalesce(max(id), 0) FROM job_events;
