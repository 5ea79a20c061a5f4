-- The full current schema, as applying every file of sql/migrations in order produces it.
-- Read this file to learn the database; change the database only by adding a migration, and
-- keep this file in step (tests/integration/test_migrations.py compares the two).

CREATE TABLE schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION job_status_rank(status text) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'accepted'  THEN 0
        WHEN 'submitted' THEN 1
        WHEN 'queued'    THEN 2
        WHEN 'running'   THEN 3
        WHEN 'succeeded' THEN 4
        WHEN 'failed'    THEN 4
        WHEN 'canceled'  THEN 4
    END::smallint
$$;

CREATE FUNCTION job_status_is_terminal(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT status IN ('succeeded', 'failed', 'canceled')
$$;

-- A job only moves forward (steps may be skipped); terminal statuses are final.
CREATE FUNCTION job_transition_allowed(from_status text, to_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT NOT job_status_is_terminal(from_status)
       AND job_status_rank(to_status) > job_status_rank(from_status)
$$;

CREATE TABLE jobs (
    id                  text        PRIMARY KEY,
    provider            text        NOT NULL,
    model               text        NOT NULL,
    status              text        NOT NULL CHECK (job_status_rank(status) IS NOT NULL),
    provider_job_id     text,
    input               jsonb       NOT NULL,
    metadata            jsonb,
    webhook_url         text,
    outputs             jsonb,
    error               jsonb,
    idempotency_key     text,
    request_hash        text        NOT NULL,
    last_seq            integer     NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at        timestamptz,
    CHECK (provider IN ('krea', 'fal', 'scenario'))
);

CREATE UNIQUE INDEX jobs_idempotency_key_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_provider_job_id_idx ON jobs (provider, provider_job_id)
    WHERE provider_job_id IS NOT NULL;
CREATE INDEX jobs_provider_id_idx ON jobs (provider, id);
CREATE INDEX jobs_status_id_idx ON jobs (status, id);

CREATE TABLE job_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      text        NOT NULL REFERENCES jobs (id),
    seq         integer     NOT NULL,
    type        text        NOT NULL,
    from_status text,
    to_status   text,
    source      text        NOT NULL CHECK (source IN ('api', 'webhook', 'poll', 'system')),
    data        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (job_id, seq),
    CHECK (to_status IS NULL OR job_status_rank(to_status) IS NOT NULL),
    CHECK (from_status IS NULL OR to_status IS NOT NULL)
);

-- The history is append-only: the database itself refuses UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION job_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'job_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER job_events_append_only
    BEFORE UPDATE OR DELETE ON job_events
    FOR EACH ROW EXECUTE FUNCTION job_events_refuse_change();
CREATE TRIGGER job_events_no_truncate
    BEFORE TRUNCATE ON job_events
    FOR EACH STATEMENT EXECUTE FUNCTION job_events_refuse_change();

-- The state machine is enforced by the database as well: no write can move a job backwards,
-- and a job (the permanent record) is never deleted.
CREATE FUNCTION jobs_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'jobs are permanent: DELETE refused' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT job_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'job %: transition % -> % refused', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_guard
    BEFORE UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_guard();

-- Appends one event to a job whose row the caller has locked and whose last_seq it has already
-- advanced to p_seq.
--
-- Event ids must grow in commit order (they are the stream's Last-Event-ID, and a reader
-- resuming "after id N" must never miss a later-committed smaller id). An identity column alone
-- does not give that, so every appender takes one transaction-scoped advisory lock before it
-- draws its id and holds it to commit: ids are drawn in the order transactions commit.
-- Lock order is always job row(s) first, then this lock.
CREATE FUNCTION append_job_event(
    p_job_id text, p_seq integer, p_type text, p_from text, p_to text, p_source text, p_data jsonb
) RETURNS job_events
LANGUAGE plpgsql AS $$
DECLARE
    ev job_events;
BEGIN
    PERFORM pg_advisory_xact_lock(7428061943);  -- the event-order lock (see above)
    INSERT INTO job_events (job_id, seq, type, from_status, to_status, source, data)
    VALUES (p_job_id, p_seq, p_type, p_from, p_to, p_source, coalesce(p_data, '{}'::jsonb))
    RETURNING * INTO ev;
    -- Listeners are only woken; the payload carries ids, never data.
    PERFORM pg_notify('job_events', ev.id::text || ',' || ev.job_id);
    RETURN ev;
END
$$;

-- Creates a job with its first event, or returns the job that already holds the idempotency key.
-- The unique index decides (insert first, never check-then-insert); created tells which.
CREATE FUNCTION create_job(
    p_id text, p_provider text, p_model text, p_input jsonb, p_metadata jsonb,
    p_webhook_url text, p_idempotency_key text, p_request_hash text, p_event_data jsonb,
    OUT created boolean, OUT job jobs
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_url,
                      idempotency_key, request_hash, last_seq)
    VALUES (p_id, p_provider, p_model, 'accepted', p_input, p_metadata, p_webhook_url,
            p_idempotency_key, p_request_hash, 1)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO job;
    IF FOUND THEN
        created := true;
        PERFORM append_job_event(p_id, 1, 'status_changed', NULL, 'accepted', 'api', p_event_data);
        RETURN;
    END IF;
    -- The conflicting transaction has committed (ON CONFLICT waited for it); this statement
    -- runs with a fresh snapshot and sees it.
    created := false;
    SELECT * INTO job FROM jobs WHERE idempotency_key = p_idempotency_key;
END
$$;

-- Applies one observation of a job's status (from the API, a webhook, a poll or the system).
-- Forward moves change the job and add one status_changed event, all in this one statement.
-- A duplicate or stale observation never changes the status; it is recorded as an
-- observation_ignored event when p_record_ignored is set (webhooks), so the audit trail shows
-- every delivery without repeating a step.
CREATE FUNCTION apply_observation(
    p_job_id text, p_status text, p_source text, p_data jsonb,
    p_provider_job_id text, p_outputs jsonb, p_error jsonb, p_record_ignored boolean,
    OUT applied boolean, OUT event_id bigint, OUT job jobs
)
LANGUAGE plpgsql AS $$
DECLARE
    v_from text;
    ev job_events;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        applied := false;
        RETURN;
    END IF;
    v_from := job.status;
    IF job_transition_allowed(v_from, p_status) THEN
        UPDATE jobs SET
            status          = p_status,
            last_seq        = last_seq + 1,
            provider_job_id = coalesce(jobs.provider_job_id, p_provider_job_id),
            outputs         = coalesce(p_outputs, jobs.outputs),
            error           = coalesce(p_error, jobs.error),
            updated_at      = clock_timestamp(),
            completed_at    = CASE WHEN job_status_is_terminal(p_status)
                                   THEN clock_timestamp() END
        WHERE id = p_job_id
        RETURNING * INTO job;
        ev := append_job_event(p_job_id, job.last_seq, 'status_changed', v_from, p_status,
                               p_source, p_data);
        applied := true;
        event_id := ev.id;
        RETURN;
    END IF;
    applied := false;
    IF p_record_ignored THEN
        UPDATE jobs SET last_seq = last_seq + 1 WHERE id = p_job_id RETURNING * INTO job;
        ev := append_job_event(
            p_job_id, job.last_seq, 'observation_ignored', NULL, NULL, p_source,
            coalesce(p_data, '{}'::jsonb) || jsonb_build_object(
                'observed_status', p_status,
                'reason', CASE WHEN p_status = v_from THEN 'duplicate' ELSE 'stale' END));
        event_id := ev.id;
    END IF;
END
$$;

-- Records a client's cancel request. A job not yet sent to its provider is canceled at once;
-- a job at the provider keeps its status until the provider confirms. outcome is one of
-- 'not_found', 'finished', 'already_requested', 'requested', 'canceled'.
CREATE FUNCTION request_cancel(p_job_id text, OUT outcome text, OUT job jobs)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF job_status_is_terminal(job.status) THEN
        outcome := 'finished';
        RETURN;
    END IF;
    IF job.cancel_requested_at IS NOT NULL THEN
        outcome := 'already_requested';
        RETURN;
    END IF;
    UPDATE jobs SET cancel_requested_at = clock_timestamp(), last_seq = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'cancel_requested', NULL, NULL, 'api', '{}');
    outcome := 'requested';
    IF job.status = 'accepted' THEN
        UPDATE jobs SET status = 'canceled', last_seq = last_seq + 1,
                        updated_at = clock_timestamp(), completed_at = clock_timestamp()
        WHERE id = p_job_id RETURNING * INTO job;
        PERFORM append_job_event(p_job_id, job.last_seq, 'status_changed', 'accepted', 'canceled',
                                 'api', '{"reason": "canceled before submission"}');
        outcome := 'canceled';
    END IF;
END
$$;
