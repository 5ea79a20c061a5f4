-- 0009: submissions whose outcome is unknown are settled by asking the provider. The job records
-- when the unknown outcome was first recorded; a lookup that finds no job at the provider sends
-- it again (it never left), one that finds the job binds it (at most one of our jobs per
-- provider job).

ALTER TABLE jobs ADD COLUMN submit_unknown_at timestamptz;

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
