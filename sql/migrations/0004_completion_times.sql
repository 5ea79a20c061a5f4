-- 0004: the completion times the runner schedules by. Besides the p95 (the webhook grace), the
-- p10: together they bound the window in which most of a model's jobs finish, which a polled
-- provider (Scenario) is polled densely within (service.workers.schedule.CompletionWindow).

DROP FUNCTION completion_seconds_p95(text, text);

CREATE FUNCTION completion_seconds(
    p_provider text, p_model text,
    OUT samples bigint, OUT p10 double precision, OUT p95 double precision
)
LANGUAGE sql STABLE AS $$
    SELECT count(*),
           percentile_cont(0.10) WITHIN GROUP (ORDER BY seconds),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds)
    FROM (
        SELECT extract(epoch FROM completed_at - submitted_at) AS seconds FROM jobs
        WHERE provider = p_provider AND model = p_model AND status = 'succeeded'
          AND submitted_at IS NOT NULL AND completed_at > now() - interval '1 day'
        ORDER BY completed_at DESC
        LIMIT 1000
    ) recent
$$;
