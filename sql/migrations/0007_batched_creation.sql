-- 0007: batched job creation. Concurrent POST /v1/jobs are created in one statement and one
-- commit per batch. The event-order lock is taken first: a batch that must wait for another's
-- uncommitted row (the same Idempotency-Key in both) then never holds that lock while it waits,
-- so two batches cannot deadlock.

CREATE FUNCTION create_jobs(
    p_ids text[], p_providers text[], p_models text[], p_inputs jsonb[], p_metadata jsonb[],
    p_webhook_urls text[], p_idempotency_keys text[], p_request_hashes text[], p_timeouts_s float8[]
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
                        make_interval(secs => p_timeouts_s[i])) c;
        ord := i;
        created := r.created;
        job := r.job;
        RETURN NEXT;
    END LOOP;
END
$$;
