-- 0004: client webhooks through an outbox.
--
-- Every status_changed event of a job that has a webhook_url gets a delivery row, written by a
-- trigger in the same transaction as the event (so no change is announced that did not happen,
-- and none that happened is missed). The row keeps a snapshot of the job as it was at that
-- event, so every retry sends the same body with the same webhook-id. Deliveries are claimed by
-- lease with SKIP LOCKED, like jobs. Every attempt is recorded.

ALTER TABLE jobs ADD COLUMN webhook_stopped_at timestamptz;  -- the client answered 410

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
    SELECT j.id, NEW.id, j.webhook_url, to_jsonb(j), 'job.' || NEW.to_status, NEW.created_at,
           NEW.created_at
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
