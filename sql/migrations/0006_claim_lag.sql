-- 0006: a claim remembers when the job was due, so the runner can measure how late it acts
-- (the due-time lag, exported as runner_due_lag_seconds).

ALTER TABLE jobs ADD COLUMN last_due_at timestamptz;

CREATE OR REPLACE FUNCTION claim_due_jobs(p_owner text, p_limit integer, p_lease interval)
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
