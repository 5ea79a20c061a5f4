-- 0008: the runner's writes batched too. apply_observations takes the scheduling fields that
-- apply_observation has (provider state, next action, lease owner), and begin_submissions
-- starts the submissions of a whole claimed batch in one statement.

DROP FUNCTION apply_observations(text[], text[], text[], jsonb[], text[], jsonb[], jsonb[], boolean[]);

CREATE FUNCTION apply_observations(
    p_job_ids text[], p_statuses text[], p_sources text[], p_data jsonb[],
    p_provider_job_ids text[], p_outputs jsonb[], p_errors jsonb[], p_record_ignored boolean[],
    p_provider_states jsonb[], p_next_action_ats timestamptz[], p_lease_owners text[]
) RETURNS TABLE (ord integer, applied boolean, event_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    r record;
BEGIN
    PERFORM 1 FROM jobs WHERE id = ANY (p_job_ids) ORDER BY id FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_job_ids, 1), 0) LOOP
        SELECT o.applied, o.event_id INTO r
        FROM apply_observation(p_job_ids[i], p_statuses[i], p_sources[i], p_data[i],
                               p_provider_job_ids[i], p_outputs[i], p_errors[i],
                               p_record_ignored[i], p_provider_states[i], p_next_action_ats[i],
                               p_lease_owners[i]) o;
        ord := i;
        applied := coalesce(r.applied, false);
        event_id := r.event_id;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE FUNCTION begin_submissions(p_job_ids text[], p_owner text, p_token_hashes text[])
RETURNS TABLE (ord integer, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    PERFORM 1 FROM jobs WHERE id = ANY (p_job_ids) ORDER BY id FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_job_ids, 1), 0) LOOP
        ord := i;
        SELECT b.outcome INTO outcome FROM begin_submission(p_job_ids[i], p_owner, p_token_hashes[i]) b;
        RETURN NEXT;
    END LOOP;
END
$$;
