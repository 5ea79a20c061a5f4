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
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('succeeded', 'failed', 'canceled')
$$;

-- A job only moves forward (steps may be skipped); terminal statuses are final.
CREATE FUNCTION job_transition_allowed(from_status text, to_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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
    provider_state      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    callback_token_hash text,
    next_action_at      timestamptz,
    lease_owner         text,
    checks              integer     NOT NULL DEFAULT 0,
    submit_attempts     integer     NOT NULL DEFAULT 0,
    submit_started_at   timestamptz,
    submitted_at        timestamptz,
    cancel_sent_at      timestamptz,
    deadline_at         timestamptz NOT NULL,
    webhook_stopped_at  timestamptz,  -- the client's webhook endpoint answered 410
    last_due_at         timestamptz,  -- when the job was due at its last claim
    submit_unknown_at   timestamptz,  -- when the submission's outcome was recorded as unknown
    CHECK (provider IN ('krea', 'fal', 'scenario'))
);

CREATE UNIQUE INDEX jobs_idempotency_key_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_provider_job_id_idx ON jobs (provider, provider_job_id)
    WHERE provider_job_id IS NOT NULL;
CREATE INDEX jobs_provider_id_idx ON jobs (provider, id);
CREATE INDEX jobs_status_id_idx ON jobs (status, id);
-- Only unclaimed work is due: claiming pushes next_action_at ahead by the lease.
CREATE INDEX jobs_next_action_at_idx ON jobs (next_action_at) WHERE next_action_at IS NOT NULL;
CREATE INDEX jobs_completed_idx ON jobs (provider, model, completed_at) WHERE status = 'succeeded';

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

-- Creates a job with its first event (due at once, to be submitted), or returns the job that
-- already holds the idempotency key. The unique index decides: insert first, never
-- check-then-insert.
CREATE FUNCTION create_job(
    p_id text, p_provider text, p_model text, p_input jsonb, p_metadata jsonb,
    p_webhook_url text, p_idempotency_key text, p_request_hash text, p_event_data jsonb,
    p_timeout interval, p_traceparent text DEFAULT NULL,
    OUT created boolean, OUT job jobs
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_url,
                      idempotency_key, request_hash, last_seq, next_action_at, deadline_at,
                      traceparent)
    VALUES (p_id, p_provider, p_model, 'accepted', p_input, p_metadata, p_webhook_url,
            p_idempotency_key, p_request_hash, 1, clock_timestamp(), clock_timestamp() + p_timeout,
            p_traceparent)
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

-- Applies one observation: the status moves only forward (job_transition_allowed), provider_state
-- is merged, the schedule is set (p_next_action_at; NULL keeps
-- it; terminal clears it), and the caller's lease is released when p_lease_owner holds it.
-- A provider job id is bound even by an observation that does not move the status (a submit
-- answer that arrives after an early callback already finished the job).
CREATE FUNCTION apply_observation(
    p_job_id text, p_status text, p_source text, p_data jsonb,
    p_provider_job_id text, p_outputs jsonb, p_error jsonb, p_record_ignored boolean,
    p_provider_state jsonb, p_next_action_at timestamptz, p_lease_owner text,
    OUT applied boolean, OUT event_id bigint, OUT job jobs
)
LANGUAGE plpgsql AS $$
DECLARE
    v_from text;
    v_release boolean;
    ev job_events;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        applied := false;
        RETURN;
    END IF;
    v_from := job.status;
    v_release := p_lease_owner IS NOT NULL AND job.lease_owner = p_lease_owner;
    applied := job_transition_allowed(v_from, p_status);
    UPDATE jobs SET
        status          = CASE WHEN applied THEN p_status ELSE jobs.status END,
        last_seq        = last_seq + CASE WHEN applied OR p_record_ignored THEN 1 ELSE 0 END,
        provider_job_id = coalesce(jobs.provider_job_id, p_provider_job_id),
        provider_state  = jobs.provider_state || coalesce(p_provider_state, '{}'::jsonb),
        submitted_at    = CASE WHEN p_provider_job_id IS NOT NULL
                               THEN coalesce(jobs.submitted_at, clock_timestamp())
                               ELSE jobs.submitted_at END,
        outputs         = CASE WHEN applied THEN coalesce(p_outputs, jobs.outputs) ELSE jobs.outputs END,
        error           = CASE WHEN applied THEN coalesce(p_error, jobs.error) ELSE jobs.error END,
        updated_at      = CASE WHEN applied THEN clock_timestamp() ELSE jobs.updated_at END,
        completed_at    = CASE WHEN applied AND job_status_is_terminal(p_status)
                               THEN clock_timestamp() ELSE jobs.completed_at END,
        next_action_at  = CASE
                              WHEN job_status_is_terminal(CASE WHEN applied THEN p_status ELSE jobs.status END)
                                  THEN NULL
                              ELSE coalesce(p_next_action_at, jobs.next_action_at) END,
        lease_owner     = CASE WHEN v_release THEN NULL ELSE jobs.lease_owner END
    WHERE id = p_job_id
    RETURNING * INTO job;
    IF applied THEN
        ev := append_job_event(p_job_id, job.last_seq, 'status_changed', v_from, p_status,
                               p_source, p_data);
        event_id := ev.id;
    ELSIF p_record_ignored THEN
        ev := append_job_event(
            p_job_id, job.last_seq, 'observation_ignored', NULL, NULL, p_source,
            coalesce(p_data, '{}'::jsonb) || jsonb_build_object(
                'observed_status', p_status,
                'reason', CASE WHEN p_status = v_from THEN 'duplicate' ELSE 'stale' END));
        event_id := ev.id;
    END IF;
END
$$;

-- Appends an event that records a fact without changing the status (a submission attempt, a
-- cancel sent, a retry scheduled).
CREATE FUNCTION record_job_event(
    p_job_id text, p_type text, p_source text, p_data jsonb
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq integer;
BEGIN
    UPDATE jobs SET last_seq = last_seq + 1 WHERE id = p_job_id RETURNING last_seq INTO v_seq;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN (append_job_event(p_job_id, v_seq, p_type, NULL, NULL, p_source, p_data)).id;
END
$$;

-- Claims up to p_limit due jobs for p_owner: their next action moves p_lease ahead, so no other
-- instance takes them unless this one dies and the lease runs out. SKIP LOCKED lets instances
-- claim side by side without waiting for each other.
CREATE FUNCTION claim_due_jobs(p_owner text, p_limit integer, p_lease interval)
RETURNS SETOF jobs
LANGUAGE sql AS $$
    UPDATE jobs
    SET lease_owner = p_owner, last_due_at = jobs.next_action_at,
        next_action_at = clock_timestamp() + p_lease, checks = checks + 1
    WHERE id IN (
        SELECT id FROM jobs
        WHERE next_action_at <= clock_timestamp()
        ORDER BY next_action_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED)
    RETURNING *
$$;

-- Gives the job back to the schedule: next action at p_next_action_at, lease released (when
-- p_owner holds it), the started submission cleared when the request was certainly not sent,
-- and an event recording why when p_event_type is given.
CREATE FUNCTION reschedule_job(
    p_job_id text, p_owner text, p_next_action_at timestamptz, p_clear_submission boolean,
    p_event_type text, p_source text, p_data jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND OR job.lease_owner IS DISTINCT FROM p_owner OR job_status_is_terminal(job.status) THEN
        RETURN false;
    END IF;
    UPDATE jobs SET
        next_action_at    = p_next_action_at,
        lease_owner       = NULL,
        submit_started_at = CASE WHEN p_clear_submission THEN NULL ELSE submit_started_at END,
        last_seq          = last_seq + CASE WHEN p_event_type IS NULL THEN 0 ELSE 1 END
    WHERE id = p_job_id RETURNING * INTO job;
    IF p_event_type IS NOT NULL THEN
        PERFORM append_job_event(p_job_id, job.last_seq, p_event_type, NULL, NULL, p_source, p_data);
    END IF;
    RETURN true;
END
$$;

-- Records the provider's answer to a cancel, and when to look at the job next.
CREATE FUNCTION record_cancel_sent(
    p_job_id text, p_owner text, p_provider_state jsonb, p_next_action_at timestamptz, p_data jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE jobs SET
        cancel_sent_at = clock_timestamp(),
        provider_state = provider_state || p_provider_state,
        next_action_at = CASE WHEN job_status_is_terminal(job.status) THEN NULL
                              ELSE p_next_action_at END,
        lease_owner    = CASE WHEN lease_owner = p_owner THEN NULL ELSE lease_owner END,
        last_seq       = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'cancel_sent', NULL, NULL, 'system', p_data);
    RETURN true;
END
$$;
-- Observed completion times (submission to success) of one provider's model over the last day:
-- the base of how long to wait for its webhook before checking by poll.
CREATE FUNCTION completion_seconds(
    p_provider text, p_model text,
    OUT samples bigint, OUT p10 double precision, OUT p95 double precision
)
LANGUAGE sql STABLE AS $$
    SELECT count(*),
           percentile_cont(0.10) WITHIN GROUP (ORDER BY seconds),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds)
    FROM (
        SELECT extract(epoch FROM completed_at - submitted_at) AS seconds FROM jobs
        WHERE provider = p_provider AND model = p_model AND status = 'succeeded'
          AND submitted_at IS NOT NULL AND completed_at > now() - interval '1 day'
        ORDER BY completed_at DESC
        LIMIT 1000
    ) recent
$$;

-- Client webhooks: an outbox written by a trigger in the transaction of each status_changed
-- event, claimed by lease like jobs; every attempt recorded.
CREATE TABLE webhook_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          text        NOT NULL REFERENCES jobs (id),
    event_id        bigint      NOT NULL UNIQUE REFERENCES job_events (id),
    url             text        NOT NULL,
    job_snapshot    jsonb       NOT NULL,
    event_type      text        NOT NULL,
    event_at        timestamptz NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed', 'stopped')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    lease_owner     text,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, id);

CREATE TABLE webhook_attempts (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint      NOT NULL REFERENCES webhook_deliveries (id),
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    status_code integer,
    error       text,
    UNIQUE (delivery_id, attempt)
);

CREATE FUNCTION enqueue_client_webhook() RETURNS trigger
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

CREATE TRIGGER job_events_enqueue_client_webhook
    AFTER INSERT ON job_events
    FOR EACH ROW WHEN (NEW.type = 'status_changed')
    EXECUTE FUNCTION enqueue_client_webhook();

-- Claims up to p_limit due deliveries for p_owner, pushing their next attempt p_lease ahead.
CREATE FUNCTION claim_webhook_deliveries(p_owner text, p_limit integer, p_lease interval)
RETURNS SETOF webhook_deliveries
LANGUAGE sql AS $$
    UPDATE webhook_deliveries
    SET lease_owner = p_owner, next_attempt_at = clock_timestamp() + p_lease
    WHERE id IN (
        SELECT id FROM webhook_deliveries
        WHERE next_attempt_at <= clock_timestamp()
        ORDER BY next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED)
    RETURNING *
$$;

-- Records one attempt and what follows it: p_outcome 'delivered', 'retry' (at p_next_at),
-- 'failed' (no retry left, or a target that is refused), or 'stopped' (410: this delivery and
-- every pending one of the job stop, and the job announces nothing more).
CREATE FUNCTION record_webhook_attempt(
    p_delivery_id bigint, p_owner text, p_started_at timestamptz, p_duration_ms double precision,
    p_status_code integer, p_error text, p_outcome text, p_next_at timestamptz
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d webhook_deliveries;
BEGIN
    UPDATE webhook_deliveries SET
        attempts        = attempts + 1,
        state           = CASE p_outcome WHEN 'retry' THEN 'pending' ELSE p_outcome END,
        next_attempt_at = CASE WHEN p_outcome = 'retry' THEN p_next_at END,
        lease_owner     = NULL,
        last_error      = p_error,
        finished_at     = CASE WHEN p_outcome = 'retry' THEN NULL ELSE clock_timestamp() END
    WHERE id = p_delivery_id
    RETURNING * INTO d;
    INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
    VALUES (p_delivery_id, d.attempts, p_started_at, p_duration_ms, p_status_code, p_error);
    IF p_outcome = 'stopped' THEN
        UPDATE jobs SET webhook_stopped_at = clock_timestamp() WHERE id = d.job_id;
        UPDATE webhook_deliveries SET state = 'stopped', next_attempt_at = NULL,
                                      finished_at = clock_timestamp(),
                                      last_error = 'stopped: the endpoint answered 410'
        WHERE job_id = d.job_id AND state = 'pending';
    END IF;
END
$$;

-- Batched intake: many observations in one statement and one commit; rows locked in id order
-- first so concurrent batches cannot deadlock.
CREATE FUNCTION apply_observations(
    p_job_ids text[], p_statuses text[], p_sources text[], p_data jsonb[],
    p_provider_job_ids text[], p_outputs jsonb[], p_errors jsonb[], p_record_ignored boolean[],
    p_provider_states jsonb[], p_next_action_ats timestamptz[], p_lease_owners text[]
) RETURNS TABLE (ord integer, applied boolean, event_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_rounds integer;
    -- this round's events, in batch order
    e_ord integer[];
    e_job text[];
    e_seq integer[];
    e_type text[];
    e_from text[];
    e_to text[];
    e_source text[];
    e_data jsonb[];
    e_id bigint[];
    -- every item's outcome so far
    o_ord integer[] := '{}';
    o_applied boolean[] := '{}';
    o_event bigint[] := '{}';
    r_ord integer[];
    r_applied boolean[];
BEGIN
    PERFORM 1 FROM jobs WHERE id = ANY (p_job_ids) ORDER BY id FOR UPDATE;
    SELECT max(c.n) INTO v_rounds
    FROM (SELECT count(*) AS n FROM unnest(p_job_ids) AS u (id) GROUP BY u.id) c;

    FOR v_round IN 1 .. coalesce(v_rounds, 0) LOOP
        WITH items AS (
            SELECT *
            FROM (
                SELECT u.*, row_number() OVER (PARTITION BY u.job_id ORDER BY u.n) AS round
                FROM unnest(p_job_ids, p_statuses, p_sources, p_data, p_provider_job_ids,
                            p_outputs, p_errors, p_record_ignored, p_provider_states,
                            p_next_action_ats, p_lease_owners) WITH ORDINALITY
                     AS u (job_id, status, source, data, provider_job_id, outputs, error,
                           record_ignored, provider_state, next_action_at, lease_owner, n)
            ) numbered
            WHERE numbered.round = v_round
        ), decided AS (
            SELECT i.*, j.status AS from_status,
                   job_transition_allowed(j.status, i.status) AS allowed,
                   (i.lease_owner IS NOT NULL AND j.lease_owner = i.lease_owner) AS release
            FROM items i JOIN jobs j ON j.id = i.job_id
        ), updated AS (
            UPDATE jobs SET
                status          = CASE WHEN d.allowed THEN d.status ELSE jobs.status END,
                last_seq        = jobs.last_seq
                                  + CASE WHEN d.allowed OR d.record_ignored THEN 1 ELSE 0 END,
                provider_job_id = coalesce(jobs.provider_job_id, d.provider_job_id),
                provider_state  = jobs.provider_state || coalesce(d.provider_state, '{}'::jsonb),
                submitted_at    = CASE WHEN d.provider_job_id IS NOT NULL
                                       THEN coalesce(jobs.submitted_at, clock_timestamp())
                                       ELSE jobs.submitted_at END,
                outputs         = CASE WHEN d.allowed THEN coalesce(d.outputs, jobs.outputs)
                                       ELSE jobs.outputs END,
                error           = CASE WHEN d.allowed THEN coalesce(d.error, jobs.error)
                                       ELSE jobs.error END,
                updated_at      = CASE WHEN d.allowed THEN clock_timestamp() ELSE jobs.updated_at END,
                completed_at    = CASE WHEN d.allowed AND job_status_is_terminal(d.status)
                                       THEN clock_timestamp() ELSE jobs.completed_at END,
                next_action_at  = CASE
                                      WHEN job_status_is_terminal(
                                               CASE WHEN d.allowed THEN d.status ELSE jobs.status END)
                                          THEN NULL
                                      ELSE coalesce(d.next_action_at, jobs.next_action_at) END,
                lease_owner     = CASE WHEN d.release THEN NULL ELSE jobs.lease_owner END
            FROM decided d
            WHERE jobs.id = d.job_id
            RETURNING d.n, d.allowed, d.record_ignored, d.job_id, jobs.last_seq, d.from_status,
                      d.status, d.source, d.data
        )
        SELECT array_agg(u.n::integer ORDER BY u.n),
               array_agg(u.allowed ORDER BY u.n),
               array_agg(u.n::integer ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(u.job_id ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(u.last_seq ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(CASE WHEN u.allowed THEN 'status_changed' ELSE 'observation_ignored' END
                         ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(CASE WHEN u.allowed THEN u.from_status END ORDER BY u.n)
                   FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(CASE WHEN u.allowed THEN u.status END ORDER BY u.n)
                   FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(u.source ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(
                   CASE WHEN u.allowed THEN coalesce(u.data, '{}'::jsonb)
                        ELSE coalesce(u.data, '{}'::jsonb) || jsonb_build_object(
                            'observed_status', u.status,
                            'reason', CASE WHEN u.status = u.from_status
                                           THEN 'duplicate' ELSE 'stale' END)
                   END ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored)
        INTO r_ord, r_applied, e_ord, e_job, e_seq, e_type, e_from, e_to, e_source, e_data
        FROM updated u;

        o_ord := o_ord || coalesce(r_ord, '{}');
        o_applied := o_applied || coalesce(r_applied, '{}');
        IF e_ord IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(7428061943);  -- the event-order lock (append_job_event)
            WITH appended AS (
                INSERT INTO job_events (job_id, seq, type, from_status, to_status, source, data)
                SELECT e.job_id, e.seq, e.type, e.from_status, e.to_status, e.source, e.data
                FROM unnest(e_job, e_seq, e_type, e_from, e_to, e_source, e_data) WITH ORDINALITY
                     AS e (job_id, seq, type, from_status, to_status, source, data, k)
                ORDER BY e.k
                RETURNING job_events.id, job_events.job_id
            )
            SELECT array_agg(a.id ORDER BY e.k) INTO e_id
            FROM appended a
            JOIN unnest(e_job) WITH ORDINALITY AS e (job_id, k) ON e.job_id = a.job_id;
            -- Listeners are only woken; the payload carries ids, never data.
            PERFORM pg_notify('job_events', x.id::text || ',' || x.job_id)
            FROM unnest(e_id, e_job) AS x (id, job_id);
            o_event := o_event || ARRAY(
                SELECT e_id[array_position(e_ord, r.n)]
                FROM unnest(r_ord) WITH ORDINALITY AS r (n, k) ORDER BY r.k);
        ELSE
            o_event := o_event || array_fill(NULL::bigint, ARRAY[coalesce(cardinality(r_ord), 0)]);
        END IF;
    END LOOP;

    -- Every item, in batch order; an unknown job is not applied and has no event.
    RETURN QUERY
    SELECT i.n::integer, coalesce(o.applied, false), o.event_id
    FROM generate_subscripts(p_job_ids, 1) AS i (n)
    LEFT JOIN unnest(o_ord, o_applied, o_event) AS o (n, applied, event_id) ON o.n = i.n
    ORDER BY i.n;
END
$$;

-- Batched job creation: one statement and one commit per batch; the event-order lock first.
CREATE FUNCTION create_jobs(
    p_ids text[], p_providers text[], p_models text[], p_inputs jsonb[], p_metadata jsonb[],
    p_webhook_urls text[], p_idempotency_keys text[], p_request_hashes text[], p_timeouts_s float8[],
    p_traceparents text[] DEFAULT NULL
) RETURNS TABLE (ord integer, created boolean, job jobs)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock(7428061943);  -- the event-order lock (see append_job_event)
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        SELECT c.created, c.job INTO r
        FROM create_job(p_ids[i], p_providers[i], p_models[i], p_inputs[i], p_metadata[i],
                        p_webhook_urls[i], p_idempotency_keys[i], p_request_hashes[i], '{}'::jsonb,
                        make_interval(secs => p_timeouts_s[i]), p_traceparents[i]) c;
        ord := i;
        created := r.created;
        job := r.job;
        RETURN NEXT;
    END LOOP;
    PERFORM pg_notify('jobs_due', '');  -- wakes the runners of every instance
END
$$;

-- Submissions whose outcome is unknown, settled by asking the provider.
-- Records that the submission's outcome is unknown (once per submission), when to look next,
-- and releases the caller's lease.
CREATE FUNCTION record_submission_unknown(
    p_job_id text, p_owner text, p_next_action_at timestamptz, p_data jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND OR job.lease_owner IS DISTINCT FROM p_owner OR job.status <> 'accepted'
       OR job.submit_started_at IS NULL OR job.submit_unknown_at IS NOT NULL THEN
        RETURN false;
    END IF;
    UPDATE jobs SET submit_unknown_at = clock_timestamp(), next_action_at = p_next_action_at,
                    lease_owner = NULL, last_seq = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'submission_outcome_unknown', NULL, NULL,
                             'system', p_data);
    RETURN true;
END
$$;

-- The provider holds no job from this submission: it never left, so it is due to be sent now.
CREATE FUNCTION resend_unsent_submission(p_job_id text, p_owner text, p_data jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND OR job.lease_owner IS DISTINCT FROM p_owner OR job.status <> 'accepted'
       OR job.submit_started_at IS NULL THEN
        RETURN false;
    END IF;
    UPDATE jobs SET submit_started_at = NULL, submit_unknown_at = NULL,
                    next_action_at = clock_timestamp(), lease_owner = NULL,
                    last_seq = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'submission_lookup', NULL, NULL, 'system',
                             p_data);
    PERFORM pg_notify('jobs_due', '');
    RETURN true;
END
$$;

-- The provider holds the job this submission created (found in its job list): bound to this job
-- as its submission, unless another of our jobs already holds that provider job. The advisory
-- lock on the provider job makes two binders of one provider job take turns.
CREATE FUNCTION bind_listed_submission(
    p_job_id text, p_provider text, p_provider_job_id text, p_owner text,
    p_next_action_at timestamptz, p_data jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_provider || ':' || p_provider_job_id, 0));
    IF EXISTS (SELECT 1 FROM jobs WHERE provider = p_provider
                                    AND provider_job_id = p_provider_job_id) THEN
        RETURN false;
    END IF;
    RETURN coalesce((SELECT o.applied
                     FROM apply_observation(p_job_id, 'submitted', 'system', p_data,
                                            p_provider_job_id, NULL, NULL, true, NULL,
                                            p_next_action_at, p_owner) o), false);
END
$$;

-- The audit chain (0002).
CREATE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is insert-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TABLE event_seals (
    event_id  bigint      PRIMARY KEY REFERENCES job_events (id),
    job_id    text        NOT NULL,
    seq       integer     NOT NULL,
    prev_hash text        CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash      text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    sealed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (job_id, seq)
);

CREATE TABLE audit_checkpoints (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    last_event_id bigint      NOT NULL UNIQUE,
    digest        text        NOT NULL UNIQUE CHECK (digest ~ '^[0-9a-f]{64}$'),
    prev_digest   text        CHECK (prev_digest ~ '^[0-9a-f]{64}$'),
    heads         integer     NOT NULL,
    public_key    text,
    signature     text,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((public_key IS NULL) = (signature IS NULL))
);

-- What each checkpoint's digest covers: the head (latest event) of every job that changed in
-- (previous checkpoint's last_event_id, this one's]. Kept so that a verification can name the
-- job or event that no longer matches, not only say that a digest differs.
CREATE TABLE audit_checkpoint_heads (
    checkpoint_id bigint  NOT NULL REFERENCES audit_checkpoints (id),
    job_id        text    NOT NULL,
    event_id      bigint  NOT NULL,
    seq           integer NOT NULL,
    hash          text    NOT NULL,
    PRIMARY KEY (checkpoint_id, job_id)
);

CREATE TRIGGER event_seals_insert_only
    BEFORE UPDATE OR DELETE ON event_seals
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER event_seals_no_truncate
    BEFORE TRUNCATE ON event_seals
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoints_insert_only
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoint_heads_insert_only
    BEFORE UPDATE OR DELETE ON audit_checkpoint_heads
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoint_heads_no_truncate
    BEFORE TRUNCATE ON audit_checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
-- Archived outputs (0003).
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

-- Routed jobs (0007) (CONTRACT.md, Routing across providers). A routed job names a model served
-- by several providers ("provider": "auto") and is tried on them in turn, one attempt at a time.
--
-- The job row always describes its current attempt, as a direct job's row describes its only
-- one: `provider`, `model` (the provider's model id), `provider_job_id`, `provider_state`, the
-- submission columns and `deadline_at` are the attempt's. A routed job also keeps `route` (the
-- common model name the client asked for, which the API shows as the job's model), `attempt`
-- (the current attempt's number) and `provider_input` (the client's common input translated for
-- the current provider; `input` stays the client's). Every attempt has a row in job_attempts.
-- Moving to the next attempt (fail_over_attempt) resets the attempt's columns in the same
-- transaction that records why the last attempt failed; the status never moves back.
ALTER TABLE jobs
    ADD COLUMN route          text,
    ADD COLUMN attempt        integer,
    ADD COLUMN provider_input jsonb,
    ADD CONSTRAINT jobs_route_attempt CHECK ((route IS NULL) = (attempt IS NULL)
                                             AND (route IS NULL) = (provider_input IS NULL));

CREATE TABLE job_attempts (
    job_id              text        NOT NULL REFERENCES jobs (id),
    n                   integer     NOT NULL CHECK (n >= 1),
    provider            text        NOT NULL CHECK (provider IN ('krea', 'fal', 'scenario')),
    model               text        NOT NULL,
    input               jsonb       NOT NULL,   -- the translated input (the provider's parameters)
    adjustments         jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- what could not be honoured exactly
    status              text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'started', 'submitted',
                                          'succeeded', 'failed', 'canceled')),
    provider_job_id     text,
    callback_token_hash text,       -- this attempt's: a superseded attempt's callbacks are known
    error               jsonb,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at          timestamptz,             -- its submission started
    ended_at            timestamptz,
    PRIMARY KEY (job_id, n)
);

-- The current attempt's row follows the job's: submission started, provider job bound, ended.
CREATE FUNCTION job_attempts_follow() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE job_attempts SET
        provider_job_id     = NEW.provider_job_id,
        callback_token_hash = coalesce(NEW.callback_token_hash, job_attempts.callback_token_hash),
        started_at          = coalesce(job_attempts.started_at, NEW.submit_started_at),
        status              = CASE
                                  WHEN job_status_is_terminal(NEW.status) THEN NEW.status
                                  WHEN NEW.provider_job_id IS NOT NULL THEN 'submitted'
                                  WHEN NEW.submit_started_at IS NOT NULL THEN 'started'
                                  ELSE job_attempts.status END,
        error               = CASE WHEN NEW.status = 'failed' THEN NEW.error
                                   ELSE job_attempts.error END,
        ended_at            = CASE WHEN job_status_is_terminal(NEW.status)
                                   THEN coalesce(job_attempts.ended_at, clock_timestamp())
                                   ELSE job_attempts.ended_at END
    WHERE job_id = NEW.id AND n = NEW.attempt AND job_attempts.status NOT IN ('failed', 'canceled', 'succeeded');
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_attempt_follows
    AFTER UPDATE OF status, provider_job_id, submit_started_at, callback_token_hash ON jobs
    FOR EACH ROW WHEN (NEW.route IS NOT NULL)
    EXECUTE FUNCTION job_attempts_follow();

-- A job's attempts as the API shows them (oldest first); NULL for a direct job. VOLATILE so
-- that it sees the attempts written by the statement that calls it (create_routed_job).
CREATE FUNCTION job_attempts_json(p_job_id text) RETURNS jsonb
LANGUAGE sql VOLATILE AS $$
    SELECT jsonb_agg(jsonb_build_object(
               'provider', a.provider, 'model', a.model, 'provider_job_id', a.provider_job_id,
               'status', a.status, 'error', a.error, 'started_at', a.started_at)
           ORDER BY a.n)
    FROM job_attempts a WHERE a.job_id = p_job_id
$$;

-- The job as client webhooks carry it: a routed job shows its common model and its attempts.
CREATE FUNCTION job_public_snapshot(j jobs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', j.id, 'provider', j.provider, 'model', coalesce(j.route, j.model), 'status', j.status,
        'provider_job_id', j.provider_job_id, 'input', j.input, 'metadata', j.metadata,
        'webhook_url', j.webhook_url, 'outputs', j.outputs, 'error', j.error,
        'cancel_requested_at', j.cancel_requested_at, 'created_at', j.created_at,
        'updated_at', j.updated_at, 'completed_at', j.completed_at)
    || CASE WHEN j.route IS NULL THEN '{}'::jsonb
            ELSE jsonb_build_object('attempts', job_attempts_json(j.id)) END
$$;

-- Creates a routed job and its first attempt, or returns the job that already holds the
-- idempotency key (create_job's rule). p_event_data (the route, the providers skipped and why)
-- goes on the `accepted` event.
CREATE FUNCTION create_routed_job(
    p_id text, p_route text, p_provider text, p_model text, p_input jsonb, p_provider_input jsonb,
    p_adjustments jsonb, p_metadata jsonb, p_webhook_url text, p_idempotency_key text,
    p_request_hash text, p_event_data jsonb, p_timeout interval, p_traceparent text DEFAULT NULL,
    OUT created boolean, OUT job jobs
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_url,
                      idempotency_key, request_hash, last_seq, next_action_at, deadline_at,
                      route, attempt, provider_input, traceparent)
    VALUES (p_id, p_provider, p_model, 'accepted', p_input, p_metadata, p_webhook_url,
            p_idempotency_key, p_request_hash, 1, clock_timestamp(), clock_timestamp() + p_timeout,
            p_route, 1, p_provider_input, p_traceparent)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO job;
    IF FOUND THEN
        created := true;
        INSERT INTO job_attempts (job_id, n, provider, model, input, adjustments)
        VALUES (p_id, 1, p_provider, p_model, p_provider_input, coalesce(p_adjustments, '{}'));
        PERFORM append_job_event(p_id, 1, 'status_changed', NULL, 'accepted', 'api', p_event_data);
        PERFORM pg_notify('jobs_due', '');
        RETURN;
    END IF;
    created := false;
    SELECT * INTO job FROM jobs WHERE idempotency_key = p_idempotency_key;
END
$$;

-- Ends the current attempt of a routed job (p_attempt: the attempt the news is about; news of
-- an earlier attempt changes nothing and returns 'stale'), records why (`attempt_failed`), and
-- either starts the next attempt on p_next_provider (its row, the job's attempt columns reset,
-- due at once: 'next') or, with no next provider, fails the job with p_error ('failed').
CREATE FUNCTION fail_over_attempt(
    p_job_id text, p_attempt integer, p_source text, p_error jsonb, p_data jsonb,
    p_next_provider text, p_next_model text, p_next_input jsonb, p_next_adjustments jsonb,
    p_next_timeout interval
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
    v_from text;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND OR job.route IS NULL THEN
        RETURN 'not_routed';
    END IF;
    IF job_status_is_terminal(job.status) OR job.attempt <> p_attempt THEN
        RETURN 'stale';
    END IF;
    UPDATE job_attempts SET status = 'failed', error = p_error, ended_at = clock_timestamp()
    WHERE job_id = p_job_id AND n = p_attempt;
    UPDATE jobs SET last_seq = last_seq + 1 WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(
        p_job_id, job.last_seq, 'attempt_failed', NULL, NULL, p_source,
        coalesce(p_data, '{}'::jsonb) || jsonb_build_object(
            'attempt', p_attempt, 'provider', job.provider, 'model', job.model,
            'provider_job_id', job.provider_job_id, 'error', p_error));
    IF p_next_provider IS NULL THEN
        v_from := job.status;
        UPDATE jobs SET status = 'failed', error = p_error, last_seq = last_seq + 1,
                        next_action_at = NULL, lease_owner = NULL,
                        updated_at = clock_timestamp(), completed_at = clock_timestamp()
        WHERE id = p_job_id RETURNING * INTO job;
        PERFORM append_job_event(
            p_job_id, job.last_seq, 'status_changed', v_from, 'failed', p_source,
            jsonb_build_object('code', p_error ->> 'code', 'attempts', p_attempt));
        RETURN 'failed';
    END IF;
    INSERT INTO job_attempts (job_id, n, provider, model, input, adjustments)
    VALUES (p_job_id, p_attempt + 1, p_next_provider, p_next_model, p_next_input,
            coalesce(p_next_adjustments, '{}'));
    UPDATE jobs SET
        attempt = p_attempt + 1, provider = p_next_provider, model = p_next_model,
        provider_input = p_next_input, provider_job_id = NULL, provider_state = '{}'::jsonb,
        callback_token_hash = NULL, submit_started_at = NULL, submitted_at = NULL,
        submit_attempts = 0, submit_unknown_at = NULL, cancel_sent_at = NULL, checks = 0,
        deadline_at = clock_timestamp() + p_next_timeout,
        next_action_at = clock_timestamp(), lease_owner = NULL, updated_at = clock_timestamp()
    WHERE id = p_job_id;
    PERFORM pg_notify('jobs_due', '');
    RETURN 'next';
END
$$;

-- A routed job waiting for its attempt's submission: accepted, or a later attempt whose provider
-- job is not known yet (the status of an earlier attempt stays: it never moves back).
CREATE FUNCTION job_awaits_submission(j jobs) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT j.status = 'accepted' OR coalesce(j.attempt > 1 AND j.provider_job_id IS NULL, false)
$$;

-- begin_submission for any attempt: a routed job's later attempt begins as its first did, and
-- the first send of each attempt records `attempt_started` with the request sent (p_request).
CREATE FUNCTION begin_submission(
    p_job_id text, p_owner text, p_token_hash text, p_request jsonb, OUT outcome text, OUT job jobs
)
LANGUAGE plpgsql AS $$
DECLARE
    v_from text;
    v_attempt job_attempts;
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND OR NOT job_awaits_submission(job) OR job_status_is_terminal(job.status)
       OR job.submit_started_at IS NOT NULL OR job.lease_owner IS DISTINCT FROM p_owner THEN
        outcome := 'skip';
        RETURN;
    END IF;
    IF job.cancel_requested_at IS NOT NULL THEN
        v_from := job.status;
        UPDATE jobs SET status = 'canceled', last_seq = last_seq + 1, next_action_at = NULL,
                        lease_owner = NULL, updated_at = clock_timestamp(),
                        completed_at = clock_timestamp()
        WHERE id = p_job_id RETURNING * INTO job;
        PERFORM append_job_event(p_job_id, job.last_seq, 'status_changed', v_from, 'canceled',
                                 'system', '{"reason": "canceled before submission"}');
        outcome := 'canceled';
        RETURN;
    END IF;
    IF job.route IS NOT NULL AND job.submit_attempts = 0 THEN
        SELECT * INTO v_attempt FROM job_attempts WHERE job_id = p_job_id AND n = job.attempt;
        UPDATE jobs SET last_seq = last_seq + 1 WHERE id = p_job_id RETURNING * INTO job;
        PERFORM append_job_event(
            p_job_id, job.last_seq, 'attempt_started', NULL, NULL, 'system',
            jsonb_build_object('attempt', job.attempt, 'provider', job.provider,
                               'model', job.model, 'request', p_request,
                               'adjustments', v_attempt.adjustments));
    END IF;
    UPDATE jobs SET submit_started_at = clock_timestamp(), callback_token_hash = p_token_hash,
                    submit_attempts = submit_attempts + 1, last_seq = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'submission_started', NULL, NULL, 'system',
                             jsonb_build_object('attempt', job.submit_attempts));
    outcome := 'go';
END
$$;

CREATE FUNCTION begin_submissions(
    p_job_ids text[], p_owner text, p_token_hashes text[], p_requests jsonb[]
)
RETURNS TABLE (ord integer, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    PERFORM 1 FROM jobs WHERE id = ANY (p_job_ids) ORDER BY id FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_job_ids, 1), 0) LOOP
        ord := i;
        SELECT b.outcome INTO outcome
        FROM begin_submission(p_job_ids[i], p_owner, p_token_hashes[i], p_requests[i]) b;
        RETURN NEXT;
    END LOOP;
END
$$;

-- A cancel before any submission of the current attempt started ends the job at once, whatever
-- status an earlier attempt left it in.
CREATE FUNCTION request_cancel(p_job_id text, OUT outcome text, OUT job jobs)
LANGUAGE plpgsql AS $$
DECLARE
    v_from text;
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
    UPDATE jobs SET cancel_requested_at = clock_timestamp(), last_seq = last_seq + 1,
                    next_action_at = clock_timestamp()
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'cancel_requested', NULL, NULL, 'api', '{}');
    PERFORM pg_notify('jobs_due', '');
    outcome := 'requested';
    IF job_awaits_submission(job) AND job.submit_started_at IS NULL THEN
        v_from := job.status;
        UPDATE jobs SET status = 'canceled', last_seq = last_seq + 1, next_action_at = NULL,
                        updated_at = clock_timestamp(), completed_at = clock_timestamp()
        WHERE id = p_job_id RETURNING * INTO job;
        PERFORM append_job_event(p_job_id, job.last_seq, 'status_changed', v_from, 'canceled',
                                 'api', '{"reason": "canceled before submission"}');
        outcome := 'canceled';
    END IF;
END
$$;

-- Each job keeps the trace context (W3C traceparent) of the request that created it, so that
-- the work done on it later, by any instance, joins the same trace; NULL when tracing was off.
ALTER TABLE jobs
    ADD COLUMN traceparent text,
    ADD CONSTRAINT jobs_traceparent_w3c
        CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
