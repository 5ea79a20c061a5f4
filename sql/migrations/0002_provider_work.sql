-- 0002: the work on providers (submission, polling, cancel) scheduled on the job rows.
--
-- next_action_at is when some instance should next act on the job (submit it, check it, send
-- its cancel); NULL once the job is terminal. Claiming a job pushes next_action_at forward by
-- the lease and names the owner, so the due index only ever holds unclaimed work, and a job
-- whose owner died becomes due again by itself when the lease runs out. Leases live on the job
-- rows, never on worker rows that can vanish.

ALTER TABLE jobs
    ADD COLUMN provider_state      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN callback_token_hash text,
    ADD COLUMN next_action_at      timestamptz,
    ADD COLUMN lease_owner         text,
    ADD COLUMN checks              integer     NOT NULL DEFAULT 0,
    ADD COLUMN submit_attempts     integer     NOT NULL DEFAULT 0,
    ADD COLUMN submit_started_at   timestamptz,
    ADD COLUMN submitted_at        timestamptz,
    ADD COLUMN cancel_sent_at      timestamptz;

UPDATE jobs SET next_action_at = created_at WHERE NOT job_status_is_terminal(status);

CREATE INDEX jobs_next_action_at_idx ON jobs (next_action_at) WHERE next_action_at IS NOT NULL;

-- New jobs are due at once (to be submitted).
CREATE OR REPLACE FUNCTION create_job(
    p_id text, p_provider text, p_model text, p_input jsonb, p_metadata jsonb,
    p_webhook_url text, p_idempotency_key text, p_request_hash text, p_event_data jsonb,
    OUT created boolean, OUT job jobs
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_url,
                      idempotency_key, request_hash, last_seq, next_action_at)
    VALUES (p_id, p_provider, p_model, 'accepted', p_input, p_metadata, p_webhook_url,
            p_idempotency_key, p_request_hash, 1, clock_timestamp())
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO job;
    IF FOUND THEN
        created := true;
        PERFORM append_job_event(p_id, 1, 'status_changed', NULL, 'accepted', 'api', p_event_data);
        RETURN;
    END IF;
    created := false;
    SELECT * INTO job FROM jobs WHERE idempotency_key = p_idempotency_key;
END
$$;

DROP FUNCTION apply_observation(text, text, text, jsonb, text, jsonb, jsonb, boolean);

-- As in 0001, plus: provider_state is merged, the schedule is set (p_next_action_at; NULL keeps
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

-- A job is canceled at once only while no submission to the provider has started; otherwise
-- the cancel is sent to the provider by a worker, which is woken by making the job due now.
CREATE OR REPLACE FUNCTION request_cancel(p_job_id text, OUT outcome text, OUT job jobs)
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
    UPDATE jobs SET cancel_requested_at = clock_timestamp(), last_seq = last_seq + 1,
                    next_action_at = clock_timestamp()
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'cancel_requested', NULL, NULL, 'api', '{}');
    outcome := 'requested';
    IF job.status = 'accepted' AND job.submit_started_at IS NULL THEN
        UPDATE jobs SET status = 'canceled', last_seq = last_seq + 1, next_action_at = NULL,
                        updated_at = clock_timestamp(), completed_at = clock_timestamp()
        WHERE id = p_job_id RETURNING * INTO job;
        PERFORM append_job_event(p_job_id, job.last_seq, 'status_changed', 'accepted', 'canceled',
                                 'api', '{"reason": "canceled before submission"}');
        outcome := 'canceled';
    END IF;
END
$$;

-- Claims up to p_limit due jobs for p_owner: their next action moves p_lease ahead, so no other
-- instance takes them unless this one dies and the lease runs out. SKIP LOCKED lets instances
-- claim side by side without waiting for each other.
CREATE FUNCTION claim_due_jobs(p_owner text, p_limit integer, p_lease interval)
RETURNS SETOF jobs
LANGUAGE sql AS $$
    UPDATE jobs
    SET lease_owner = p_owner, next_action_at = clock_timestamp() + p_lease, checks = checks + 1
    WHERE id IN (
        SELECT id FROM jobs
        WHERE next_action_at <= clock_timestamp()
        ORDER BY next_action_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED)
    RETURNING *
$$;

-- Marks a submission as started before anything is sent, storing the hash of the callback
-- token the request will carry. After this commit a crash leaves a job whose submission
-- outcome is unknown, never one that is silently sent twice. outcome: 'go', 'canceled'
-- (a cancel came first), or 'skip' (not this owner's, or no longer to be submitted).
CREATE FUNCTION begin_submission(
    p_job_id text, p_owner text, p_token_hash text, OUT outcome text, OUT job jobs
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT * INTO job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND OR job.status <> 'accepted' OR job.submit_started_at IS NOT NULL
       OR job.lease_owner IS DISTINCT FROM p_owner THEN
        outcome := 'skip';
        RETURN;
    END IF;
    IF job.cancel_requested_at IS NOT NULL THEN
        UPDATE jobs SET status = 'canceled', last_seq = last_seq + 1, next_action_at = NULL,
                        lease_owner = NULL, updated_at = clock_timestamp(),
                        completed_at = clock_timestamp()
        WHERE id = p_job_id RETURNING * INTO job;
        PERFORM append_job_event(p_job_id, job.last_seq, 'status_changed', 'accepted', 'canceled',
                                 'system', '{"reason": "canceled before submission"}');
        outcome := 'canceled';
        RETURN;
    END IF;
    UPDATE jobs SET submit_started_at = clock_timestamp(), callback_token_hash = p_token_hash,
                    submit_attempts = submit_attempts + 1, last_seq = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'submission_started', NULL, NULL, 'system',
                             jsonb_build_object('attempt', job.submit_attempts));
    outcome := 'go';
END
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
    IF NOT FOUND OR job_status_is_terminal(job.status) THEN
        RETURN false;
    END IF;
    UPDATE jobs SET
        cancel_sent_at = clock_timestamp(),
        provider_state = provider_state || p_provider_state,
        next_action_at = p_next_action_at,
        lease_owner    = CASE WHEN lease_owner = p_owner THEN NULL ELSE lease_owner END,
        last_seq       = last_seq + 1
    WHERE id = p_job_id RETURNING * INTO job;
    PERFORM append_job_event(p_job_id, job.last_seq, 'cancel_sent', NULL, NULL, 'system', p_data);
    RETURN true;
END
$$;
