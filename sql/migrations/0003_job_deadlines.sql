-- 0003: every job has a hard deadline. A job that no provider news brings to a terminal status
-- by then ends failed with provider_timeout (the runner checks once more, then gives up and
-- cancels at the provider). Existing jobs get one hour from their creation.

ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
UPDATE jobs SET deadline_at = created_at + interval '1 hour';
ALTER TABLE jobs ALTER COLUMN deadline_at SET NOT NULL;

DROP FUNCTION create_job(text, text, text, jsonb, jsonb, text, text, text, jsonb);

-- Creates a job with its first event (due at once, to be submitted), or returns the job that
-- already holds the idempotency key. The unique index decides: insert first, never
-- check-then-insert.
CREATE FUNCTION create_job(
    p_id text, p_provider text, p_model text, p_input jsonb, p_metadata jsonb,
    p_webhook_url text, p_idempotency_key text, p_request_hash text, p_event_data jsonb,
    p_timeout interval,
    OUT created boolean, OUT job jobs
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_url,
                      idempotency_key, request_hash, last_seq, next_action_at, deadline_at)
    VALUES (p_id, p_provider, p_model, 'accepted', p_input, p_metadata, p_webhook_url,
            p_idempotency_key, p_request_hash, 1, clock_timestamp(), clock_timestamp() + p_timeout)
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

-- Observed completion times (submission to success) of one provider's model over the last day:
-- the base of how long to wait for its webhook before checking by poll.
CREATE FUNCTION completion_seconds_p95(p_provider text, p_model text, OUT samples bigint, OUT p95 double precision)
LANGUAGE sql STABLE AS $$
    SELECT count(*), percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - submitted_at))
    FROM (
        SELECT completed_at, submitted_at FROM jobs
        WHERE provider = p_provider AND model = p_model AND status = 'succeeded'
          AND submitted_at IS NOT NULL AND completed_at > now() - interval '1 day'
        ORDER BY completed_at DESC
        LIMIT 1000
    ) recent
$$;

CREATE INDEX jobs_completed_idx ON jobs (provider, model, completed_at) WHERE status = 'succeeded';
