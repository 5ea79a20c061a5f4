-- 0008: each job keeps the trace context of the request that created it (CONTRACT.md,
-- Operations: tracing), so that the work done on it later, by any instance (submission,
-- callbacks, polls, client webhooks), joins the same trace. `traceparent` is W3C's header
-- value (version 00); NULL when tracing was off on the instance that created the job.
ALTER TABLE jobs
    ADD COLUMN traceparent text,
    ADD CONSTRAINT jobs_traceparent_w3c
        CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');

-- The creating functions take it as a last parameter, NULL by default: a call without it (an
-- instance of the previous release, during a rolling upgrade) still resolves, to these.
DROP FUNCTION create_jobs(text[], text[], text[], jsonb[], jsonb[], text[], text[], text[], float8[]);
DROP FUNCTION create_job(text, text, text, jsonb, jsonb, text, text, text, jsonb, interval);
DROP FUNCTION create_routed_job(text, text, text, text, jsonb, jsonb, jsonb, jsonb, text, text,
                                text, jsonb, interval);

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
