-- 0006: observations made cheaper for PostgreSQL.
--
-- The status rules as functions the planner inlines. Declared STRICT, they were not: the
-- planner cannot prove their bodies strict (a CASE, calls of each other), so every use ran a
-- SQL function call of its own, several per observation (the guard trigger, the transition
-- rule, the terminal test), about 0.25 ms of each observation in a batch (auto_explain). Without
-- STRICT they are inlined into each statement that uses them; on NULL they still give NULL (or
-- false where one side already decides), and no caller passes NULL (status is NOT NULL).
CREATE OR REPLACE FUNCTION job_status_rank(status text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'accepted'  THEN 0
        WHEN 'submitted' THEN 1
        WHEN 'queued'    THEN 2
        WHEN 'running'   THEN 3
        WHEN 'succeeded' THEN 4
        WHEN 'failed'    THEN 4
        WHEN 'canceled'  THEN 4
    END::smallint
$$;

CREATE OR REPLACE FUNCTION job_status_is_terminal(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('succeeded', 'failed', 'canceled')
$$;

CREATE OR REPLACE FUNCTION job_transition_allowed(from_status text, to_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT job_status_is_terminal(from_status)
       AND job_status_rank(to_status) > job_status_rank(from_status)
$$;

-- A batch of observations applied set-based. apply_observations called
-- apply_observation once per item (a locking SELECT, an UPDATE and an event append, each a
-- statement of its own) and took the event-order lock at its first event, so it held that lock
-- through the rest of the batch's row work. Now each round of the batch (the k-th observation
-- of each job in it: nearly always one round) is one UPDATE of all its jobs and one INSERT of
-- all its events, and the event-order lock is taken just before that INSERT: a concurrent
-- batch's row work no longer waits for it. Item by item the outcome is apply_observation's (same
-- transitions, same events, same seq and lease rules; it still serves bind_listed_submission):
-- tests/integration/test_batched_observations.py checks that a batch ends where the same
-- observations applied one at a time by apply_observation end.
CREATE OR REPLACE FUNCTION apply_observations(
    p_job_ids text[], p_statuses text[], p_sources text[], p_data jsonb[],
    p_provider_job_ids text[], p_outputs jsonb[], p_errors jsonb[], p_record_ignored boolean[],
    p_provider_states jsonb[], p_next_action_ats timestamptz[], p_lease_owners text[]
) RETURNS TABLE (ord integer, applied boolean, event_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_rounds integer;
    -- this round's events, in batch order
    e_ord integer[];
    e_job text[];
    e_seq integer[];
    e_type text[];
    e_from text[];
    e_to text[];
    e_source text[];
    e_data jsonb[];
    e_id bigint[];
    -- every item's outcome so far
    o_ord integer[] := '{}';
    o_applied boolean[] := '{}';
    o_event bigint[] := '{}';
    r_ord integer[];
    r_applied boolean[];
BEGIN
    PERFORM 1 FROM jobs WHERE id = ANY (p_job_ids) ORDER BY id FOR UPDATE;
    SELECT max(c.n) INTO v_rounds
    FROM (SELECT count(*) AS n FROM unnest(p_job_ids) AS u (id) GROUP BY u.id) c;

    FOR v_round IN 1 .. coalesce(v_rounds, 0) LOOP
        WITH items AS (
            SELECT *
            FROM (
                SELECT u.*, row_number() OVER (PARTITION BY u.job_id ORDER BY u.n) AS round
                FROM unnest(p_job_ids, p_statuses, p_sources, p_data, p_provider_job_ids,
                            p_outputs, p_errors, p_record_ignored, p_provider_states,
                            p_next_action_ats, p_lease_owners) WITH ORDINALITY
                     AS u (job_id, status, source, data, provider_job_id, outputs, error,
                           record_ignored, provider_state, next_action_at, lease_owner, n)
            ) numbered
            WHERE numbered.round = v_round
        ), decided AS (
            SELECT i.*, j.status AS from_status,
                   job_transition_allowed(j.status, i.status) AS allowed,
                   (i.lease_owner IS NOT NULL AND j.lease_owner = i.lease_owner) AS release
            FROM items i JOIN jobs j ON j.id = i.job_id
        ), updated AS (
            UPDATE jobs SET
                status          = CASE WHEN d.allowed THEN d.status ELSE jobs.status END,
                last_seq        = jobs.last_seq
                                  + CASE WHEN d.allowed OR d.record_ignored THEN 1 ELSE 0 END,
                provider_job_id = coalesce(jobs.provider_job_id, d.provider_job_id),
                provider_state  = jobs.provider_state || coalesce(d.provider_state, '{}'::jsonb),
                submitted_at    = CASE WHEN d.provider_job_id IS NOT NULL
                                       THEN coalesce(jobs.submitted_at, clock_timestamp())
                                       ELSE jobs.submitted_at END,
                outputs         = CASE WHEN d.allowed THEN coalesce(d.outputs, jobs.outputs)
                                       ELSE jobs.outputs END,
                error           = CASE WHEN d.allowed THEN coalesce(d.error, jobs.error)
                                       ELSE jobs.error END,
                updated_at      = CASE WHEN d.allowed THEN clock_timestamp() ELSE jobs.updated_at END,
                completed_at    = CASE WHEN d.allowed AND job_status_is_terminal(d.status)
                                       THEN clock_timestamp() ELSE jobs.completed_at END,
                next_action_at  = CASE
                                      WHEN job_status_is_terminal(
                                               CASE WHEN d.allowed THEN d.status ELSE jobs.status END)
                                          THEN NULL
                                      ELSE coalesce(d.next_action_at, jobs.next_action_at) END,
                lease_owner     = CASE WHEN d.release THEN NULL ELSE jobs.lease_owner END
            FROM decided d
            WHERE jobs.id = d.job_id
            RETURNING d.n, d.allowed, d.record_ignored, d.job_id, jobs.last_seq, d.from_status,
                      d.status, d.source, d.data
        )
        SELECT array_agg(u.n::integer ORDER BY u.n),
               array_agg(u.allowed ORDER BY u.n),
               array_agg(u.n::integer ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(u.job_id ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(u.last_seq ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(CASE WHEN u.allowed THEN 'status_changed' ELSE 'observation_ignored' END
                         ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(CASE WHEN u.allowed THEN u.from_status END ORDER BY u.n)
                   FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(CASE WHEN u.allowed THEN u.status END ORDER BY u.n)
                   FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(u.source ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored),
               array_agg(
                   CASE WHEN u.allowed THEN coalesce(u.data, '{}'::jsonb)
                        ELSE coalesce(u.data, '{}'::jsonb) || jsonb_build_object(
                            'observed_status', u.status,
                            'reason', CASE WHEN u.status = u.from_status
                                           THEN 'duplicate' ELSE 'stale' END)
                   END ORDER BY u.n) FILTER (WHERE u.allowed OR u.record_ignored)
        INTO r_ord, r_applied, e_ord, e_job, e_seq, e_type, e_from, e_to, e_source, e_data
        FROM updated u;

        o_ord := o_ord || coalesce(r_ord, '{}');
        o_applied := o_applied || coalesce(r_applied, '{}');
        IF e_ord IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(7428061943);  -- the event-order lock (append_job_event)
            WITH appended AS (
                INSERT INTO job_events (job_id, seq, type, from_status, to_status, source, data)
                SELECT e.job_id, e.seq, e.type, e.from_status, e.to_status, e.source, e.data
                FROM unnest(e_job, e_seq, e_type, e_from, e_to, e_source, e_data) WITH ORDINALITY
                     AS e (job_id, seq, type, from_status, to_status, source, data, k)
                ORDER BY e.k
                RETURNING job_events.id, job_events.job_id
            )
            SELECT array_agg(a.id ORDER BY e.k) INTO e_id
            FROM appended a
            JOIN unnest(e_job) WITH ORDINALITY AS e (job_id, k) ON e.job_id = a.job_id;
            -- Listeners are only woken; the payload carries ids, never data.
            PERFORM pg_notify('job_events', x.id::text || ',' || x.job_id)
            FROM unnest(e_id, e_job) AS x (id, job_id);
            o_event := o_event || ARRAY(
                SELECT e_id[array_position(e_ord, r.n)]
                FROM unnest(r_ord) WITH ORDINALITY AS r (n, k) ORDER BY r.k);
        ELSE
            o_event := o_event || array_fill(NULL::bigint, ARRAY[coalesce(cardinality(r_ord), 0)]);
        END IF;
    END LOOP;

    -- Every item, in batch order; an unknown job is not applied and has no event.
    RETURN QUERY
    SELECT i.n::integer, coalesce(o.applied, false), o.event_id
    FROM generate_subscripts(p_job_ids, 1) AS i (n)
    LEFT JOIN unnest(o_ord, o_applied, o_event) AS o (n, applied, event_id) ON o.n = i.n
    ORDER BY i.n;
END
$$;
