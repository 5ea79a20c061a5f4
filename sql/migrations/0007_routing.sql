-- 0007: routed jobs (CONTRACT.md, Routing across providers). A routed job names a model served
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
CREATE OR REPLACE FUNCTION job_public_snapshot(j jobs) RETURNS jsonb
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
    p_request_hash text, p_event_data jsonb, p_timeout interval,
    OUT created boolean, OUT job jobs
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_url,
                      idempotency_key, request_hash, last_seq, next_action_at, deadline_at,
                      route, attempt, provider_input)
    VALUES (p_id, p_provider, p_model, 'accepted', p_input, p_metadata, p_webhook_url,
            p_idempotency_key, p_request_hash, 1, clock_timestamp(), clock_timestamp() + p_timeout,
            p_route, 1, p_provider_input)
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
DROP FUNCTION begin_submissions(text[], text, text[]);
DROP FUNCTION begin_submission(text, text, text);

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
CREATE OR REPLACE FUNCTION request_cancel(p_job_id text, OUT outcome text, OUT job jobs)
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
