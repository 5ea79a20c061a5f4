-- 0003: archived outputs. When a job becomes succeeded, one row per output is written in the
-- same transaction (an outbox, like webhook_deliveries); archivers claim rows by lease with
-- SKIP LOCKED, download each output into the output store, and record the result here and in
-- the job (its outputs' sha256, bytes, archived_url) with one event per output.

CREATE TABLE output_archives (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          text        NOT NULL REFERENCES jobs (id),
    output_index    integer     NOT NULL,
    url             text        NOT NULL,  -- the provider's URL: may be signed, never in events
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'archived', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,  -- claims so far (a crash counts as one)
    next_attempt_at timestamptz,                     -- NULL once archived or failed
    lease_owner     text,
    last_error      text,
    storage_key     text,
    sha256          text,
    bytes           bigint,
    content_type    text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    UNIQUE (job_id, output_index)
);

CREATE INDEX output_archives_due_idx ON output_archives (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;

-- The outbox rows are written by the transition itself, so a success can never be committed
-- without its archive work (nor the work without the success).
CREATE FUNCTION enqueue_output_archives() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO output_archives (job_id, output_index, url, next_attempt_at)
    SELECT NEW.id, (o.ord - 1)::integer, o.value ->> 'url', clock_timestamp()
    FROM jsonb_array_elements(coalesce(NEW.outputs, '[]'::jsonb)) WITH ORDINALITY AS o (value, ord)
    WHERE o.value ->> 'url' IS NOT NULL;
    IF FOUND THEN
        PERFORM pg_notify('output_archives', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_enqueue_output_archives
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status = 'succeeded' AND OLD.status IS DISTINCT FROM 'succeeded')
    EXECUTE FUNCTION enqueue_output_archives();

-- Claims up to p_limit due outputs for p_owner, pushing their next attempt p_lease ahead: a
-- crashed archiver's outputs are taken over when its lease runs out.
CREATE FUNCTION claim_output_archives(p_owner text, p_limit integer, p_lease interval)
RETURNS SETOF output_archives
LANGUAGE sql AS $$
    UPDATE output_archives
    SET lease_owner = p_owner, next_attempt_at = clock_timestamp() + p_lease,
        attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM output_archives
        WHERE next_attempt_at <= clock_timestamp()
        ORDER BY next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED)
    RETURNING *
$$;

-- Records one archived output, once: the job's output gets its sha256, bytes and archived_url
-- (and the width, height and content type the provider did not give), one output_archived
-- event is appended, and when it was the job's last output to archive the client webhook
-- job.outputs_archived is enqueued. Refused (false) unless the caller holds the lease of a
-- pending output, so a second record of the same output is impossible.
CREATE FUNCTION record_output_archived(
    p_job_id text, p_index integer, p_owner text, p_storage_key text, p_sha256 text,
    p_bytes bigint, p_content_type text, p_width integer, p_height integer,
    OUT recorded boolean, OUT all_archived boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
    a output_archives;
    v_output jsonb;
    v_data jsonb;
    ev job_events;
BEGIN
    recorded := false;
    all_archived := false;
    -- Lock order: the job row first (as every writer of a job), then its archive row.
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    SELECT * INTO a FROM output_archives
    WHERE job_id = p_job_id AND output_index = p_index FOR UPDATE;
    IF NOT FOUND OR a.state <> 'pending' OR a.lease_owner IS DISTINCT FROM p_owner THEN
        RETURN;
    END IF;
    v_output := job.outputs -> p_index;
    v_data := jsonb_build_object('index', p_index, 'sha256', p_sha256, 'bytes', p_bytes,
                                 'content_type', p_content_type);
    IF (v_output ->> 'width') IS NULL AND p_width IS NOT NULL THEN
        v_output := v_output || jsonb_build_object('width', p_width, 'height', p_height);
        v_data := v_data || jsonb_build_object('width', p_width, 'height', p_height);
    END IF;
    v_output := v_output || jsonb_build_object(
        'sha256', p_sha256, 'bytes', p_bytes,
        'archived_url', '/v1/jobs/' || p_job_id || '/outputs/' || p_index,
        'content_type', coalesce(v_output ->> 'content_type', p_content_type));
    UPDATE jobs SET outputs = jsonb_set(outputs, ARRAY[p_index::text], v_output),
                    last_seq = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    ev := append_job_event(p_job_id, job.last_seq, 'output_archived', NULL, NULL, 'system', v_data);
    UPDATE output_archives SET
        state = 'archived', storage_key = p_storage_key, sha256 = p_sha256, bytes = p_bytes,
        content_type = p_content_type, next_attempt_at = NULL, lease_owner = NULL,
        last_error = NULL, finished_at = clock_timestamp()
    WHERE id = a.id;
    recorded := true;
    all_archived := NOT EXISTS (SELECT 1 FROM output_archives
                                WHERE job_id = p_job_id AND state <> 'archived');
    IF all_archived THEN
        PERFORM enqueue_outputs_archived_webhook(job, ev);
    END IF;
END
$$;

-- The job's public columns (those the API's job object is built from): the snapshot each
-- client webhook carries, defined once for the status webhooks and job.outputs_archived
-- (STABLE: timestamps become text in the session's time zone).
CREATE FUNCTION job_public_snapshot(j jobs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', j.id, 'provider', j.provider, 'model', j.model, 'status', j.status,
        'provider_job_id', j.provider_job_id, 'input', j.input, 'metadata', j.metadata,
        'webhook_url', j.webhook_url, 'outputs', j.outputs, 'error', j.error,
        'cancel_requested_at', j.cancel_requested_at, 'created_at', j.created_at,
        'updated_at', j.updated_at, 'completed_at', j.completed_at)
$$;

-- The status webhooks' trigger function of 0001, now built on that snapshot.
CREATE OR REPLACE FUNCTION enqueue_client_webhook() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (job_id, event_id, url, job_snapshot, event_type, event_at,
                                    next_attempt_at)
    SELECT j.id, NEW.id, j.webhook_url, job_public_snapshot(j), 'job.' || NEW.to_status,
           NEW.created_at, NEW.created_at
    FROM jobs j
    WHERE j.id = NEW.job_id AND j.webhook_url IS NOT NULL AND j.webhook_stopped_at IS NULL;
    IF FOUND THEN
        PERFORM pg_notify('webhook_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;

-- job.outputs_archived for a job with a webhook_url: a delivery row like those of
-- enqueue_client_webhook (0001), with the same public snapshot of the job, tied to the event
-- that archived its last output (its id is the webhook-id, so the row is written once).
CREATE FUNCTION enqueue_outputs_archived_webhook(j jobs, ev job_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF j.webhook_url IS NULL OR j.webhook_stopped_at IS NOT NULL THEN
        RETURN;
    END IF;
    INSERT INTO webhook_deliveries (job_id, event_id, url, job_snapshot, event_type, event_at,
                                    next_attempt_at)
    VALUES (j.id, ev.id, j.webhook_url,
            job_public_snapshot(j), 'job.outputs_archived', ev.created_at, ev.created_at);
    PERFORM pg_notify('webhook_deliveries', '');
END
$$;

-- Records a failed attempt: retried at p_retry_at, or (p_retry_at NULL) given up with one
-- output_archive_failed event. The job stays succeeded. Refused (false) unless the caller
-- holds the lease of a pending output.
CREATE FUNCTION record_output_attempt_failed(
    p_job_id text, p_index integer, p_owner text, p_code text, p_reason text,
    p_retry_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
    a output_archives;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    SELECT * INTO a FROM output_archives
    WHERE job_id = p_job_id AND output_index = p_index FOR UPDATE;
    IF NOT FOUND OR a.state <> 'pending' OR a.lease_owner IS DISTINCT FROM p_owner THEN
        RETURN false;
    END IF;
    IF p_retry_at IS NOT NULL THEN
        UPDATE output_archives SET next_attempt_at = p_retry_at, lease_owner = NULL,
                                   last_error = p_code || ': ' || p_reason
        WHERE id = a.id;
        RETURN true;
    END IF;
    UPDATE output_archives SET state = 'failed', next_attempt_at = NULL, lease_owner = NULL,
                               last_error = p_code || ': ' || p_reason,
                               finished_at = clock_timestamp()
    WHERE id = a.id;
    UPDATE jobs SET last_seq = last_seq + 1 WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'output_archive_failed', NULL, NULL, 'system',
                             jsonb_build_object('index', p_index, 'code', p_code,
                                                'reason', p_reason, 'attempts', a.attempts));
    RETURN true;
END
$$;
