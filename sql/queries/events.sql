-- Named queries of the event stream.

-- name: events_after
-- A page of the log after a resume point, in commit order (ids grow in commit order).
SELECT e.*, s.prev_hash, s.hash
FROM job_events e LEFT JOIN event_seals s ON s.event_id = e.id
WHERE e.id > $1 ORDER BY e.id LIMIT $2;

-- name: job_events_after
SELECT e.*, s.prev_hash, s.hash
FROM job_events e LEFT JOIN event_seals s ON s.event_id = e.id
WHERE e.job_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3;

-- name: last_event_id
SELECT coalesce(max(id), 0) FROM job_events;
