-- 0005: a cancel sent to the provider is recorded even when the job ended meanwhile (the
-- provider's "cancelled" webhook may commit before the runner records the cancel it sent): the
-- history keeps the request that was made. A job that ended gets no next action.
CREATE OR REPLACE FUNCTION record_cancel_sent(
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
