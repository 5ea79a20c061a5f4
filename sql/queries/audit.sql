-- Named queries of the audit chain (service.store.audit).

-- name: audit_events_to_seal
-- The events after the last sealed one, in id (= commit) order: every event below them is
-- committed and sealed already.
SELECT * FROM job_events
WHERE id > (SELECT coalesce(max(event_id), 0) FROM event_seals)
ORDER BY id
LIMIT $1;

-- name: audit_latest_seals
-- The latest seal of each of the given jobs (what their next event chains to).
SELECT DISTINCT ON (job_id) job_id, seq, hash
FROM event_seals
WHERE job_id = ANY($1::text[])
ORDER BY job_id, seq DESC;

-- name: audit_insert_seals
INSERT INTO event_seals (event_id, job_id, seq, prev_hash, hash)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::text[], $5::text[]);

-- name: audit_notify_sealed
SELECT pg_notify('audit_sealed', $1::text);

-- name: audit_last_sealed_event_id
SELECT coalesce(max(event_id), 0) FROM event_seals;

-- name: audit_last_checkpoint
SELECT * FROM audit_checkpoints ORDER BY id DESC LIMIT 1;

-- name: audit_sealed_heads
-- The head (latest sealed event) of every job that changed in ($1, $2], as the sealer sees it.
SELECT DISTINCT ON (job_id) job_id, event_id, seq, hash
FROM event_seals
WHERE event_id > $1 AND event_id <= $2
ORDER BY job_id, event_id DESC;

-- name: audit_insert_checkpoint
INSERT INTO audit_checkpoints (last_event_id, digest, prev_digest, heads, public_key, signature)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: audit_insert_checkpoint_heads
INSERT INTO audit_checkpoint_heads (checkpoint_id, job_id, event_id, seq, hash)
SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::integer[], $5::text[]);

-- name: audit_checkpoints_page
SELECT * FROM audit_checkpoints WHERE id > $1 ORDER BY id LIMIT $2;

-- name: audit_checkpoint_heads
SELECT job_id, event_id, seq, hash FROM audit_checkpoint_heads
WHERE checkpoint_id = $1 ORDER BY job_id;

-- name: audit_heads_now
-- The head of every job that has events in ($1, $2] as the log is now (for verification:
-- compared with what a checkpoint recorded).
SELECT DISTINCT ON (e.job_id) e.job_id, e.id AS event_id, e.seq, s.hash
FROM job_events e
LEFT JOIN event_seals s ON s.event_id = e.id
WHERE e.id > $1 AND e.id <= $2
ORDER BY e.job_id, e.id DESC;

-- name: audit_chain_rows
-- Every job (or one) with its events and their seals, in chain order, for verification.
SELECT j.id AS chain_job_id, j.last_seq AS chain_last_seq,
       e.id, e.job_id, e.seq, e.type, e.from_status, e.to_status, e.source, e.data, e.created_at,
       s.prev_hash, s.hash, s.job_id AS seal_job_id, s.seq AS seal_seq
FROM jobs j
LEFT JOIN job_events e ON e.job_id = j.id
LEFT JOIN event_seals s ON s.event_id = e.id
WHERE ($1::text IS NULL OR j.id = $1)
ORDER BY j.id, e.seq, e.id;

-- name: audit_orphan_seals
-- Seals whose event is gone (only a superuser with triggers disabled can remove an event).
SELECT event_id, job_id, seq FROM event_seals s
WHERE ($1::text IS NULL OR s.job_id = $1)
  AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.id = s.event_id)
ORDER BY event_id;

-- name: audit_orphan_events
-- Events whose job row is gone.
SELECT id, job_id, seq FROM job_events e
WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id)
ORDER BY id
LIMIT 1;

-- name: audit_try_lock
-- One sealer at a time across instances (held to the end of its transaction); the others skip.
SELECT pg_try_advisory_xact_lock(7428061944);

-- name: audit_async_commit
SET LOCAL synchronous_commit = off;

-- name: audit_tables_exist
SELECT to_regclass('jobs') IS NOT NULL AND to_regclass('event_seals') IS NOT NULL;

-- name: audit_export_events
-- Sealed events created in [$1, $2) (either bound may be null), of one job ($3) or all, in id
-- (commit) order, with their seals: what `python -m service audit export` writes.
SELECT e.*, s.prev_hash, s.hash
FROM job_events e JOIN event_seals s ON s.event_id = e.id
WHERE ($1::timestamptz IS NULL OR e.created_at >= $1)
  AND ($2::timestamptz IS NULL OR e.created_at < $2)
  AND ($3::text IS NULL OR e.job_id = $3)
ORDER BY e.id;

-- name: audit_unsealed_count
-- Events not sealed yet (left out of an export: their hash is not computed yet).
SELECT count(*) FROM job_events
WHERE id > (SELECT coalesce(max(event_id), 0) FROM event_seals)
  AND ($1::timestamptz IS NULL OR created_at >= $1)
  AND ($2::timestamptz IS NULL OR created_at < $2)
  AND ($3::text IS NULL OR job_id = $3);
