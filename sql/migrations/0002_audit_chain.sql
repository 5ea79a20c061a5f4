-- The audit chain: tamper evidence for the append-only history (CONTRACT.md, Audit chain).
--
-- Each event's hash (SHA-256 of its RFC 8785 form as the API returns it, prev_hash included) is
-- computed off the hot path by the sealer (service.audit.sealer) and kept here, beside the
-- event: job_events stays exactly what was appended, and seals are themselves insert-only.
-- Periodic checkpoints chain a digest over the latest hash of every job that changed since the
-- previous checkpoint, so a kept checkpoint proves later that no job or trailing event was
-- removed (service.audit.chain defines the digest).

CREATE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is insert-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TABLE event_seals (
    event_id  bigint      PRIMARY KEY REFERENCES job_events (id),
    job_id    text        NOT NULL,
    seq       integer     NOT NULL,
    prev_hash text        CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash      text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    sealed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (job_id, seq)
);

CREATE TABLE audit_checkpoints (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    last_event_id bigint      NOT NULL UNIQUE,
    digest        text        NOT NULL UNIQUE CHECK (digest ~ '^[0-9a-f]{64}$'),
    prev_digest   text        CHECK (prev_digest ~ '^[0-9a-f]{64}$'),
    heads         integer     NOT NULL,
    public_key    text,
    signature     text,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((public_key IS NULL) = (signature IS NULL))
);

-- What each checkpoint's digest covers: the head (latest event) of every job that changed in
-- (previous checkpoint's last_event_id, this one's]. Kept so that a verification can name the
-- job or event that no longer matches, not only say that a digest differs.
CREATE TABLE audit_checkpoint_heads (
    checkpoint_id bigint  NOT NULL REFERENCES audit_checkpoints (id),
    job_id        text    NOT NULL,
    event_id      bigint  NOT NULL,
    seq           integer NOT NULL,
    hash          text    NOT NULL,
    PRIMARY KEY (checkpoint_id, job_id)
);

CREATE TRIGGER event_seals_insert_only
    BEFORE UPDATE OR DELETE ON event_seals
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER event_seals_no_truncate
    BEFORE TRUNCATE ON event_seals
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoints_insert_only
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoint_heads_insert_only
    BEFORE UPDATE OR DELETE ON audit_checkpoint_heads
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_checkpoint_heads_no_truncate
    BEFORE TRUNCATE ON audit_checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
