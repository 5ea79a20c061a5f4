-- 0005: batched intake. Many observations (from concurrent callbacks) are applied in one
-- statement and committed together: one commit, one event-order lock, for the whole batch.
-- Each is applied exactly as apply_observation does, in order, so two observations of the same
-- job in one batch behave as if they had come one after the other.
--
-- Every job row of the batch is locked first, in id order: two concurrent batches (or a batch
-- and a single change) then never wait for each other's rows while one holds the event-order
-- lock, so they cannot deadlock.

CREATE FUNCTION apply_observations(
    p_job_ids text[], p_statuses text[], p_sources text[], p_data jsonb[],
    p_provider_job_ids text[], p_outputs jsonb[], p_errors jsonb[], p_record_ignored boolean[]
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
                               p_record_ignored[i], NULL, NULL, NULL) o;
        ord := i;
        applied := coalesce(r.applied, false);
        event_id := r.event_id;
        RETURN NEXT;
    END LOOP;
END
$$;
