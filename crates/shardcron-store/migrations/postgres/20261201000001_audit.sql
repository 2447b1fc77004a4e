-- The audit log, PostgreSQL. `at` is microseconds since the Unix epoch, UTC;
-- `detail` is JSON text.
CREATE TABLE shardcron_audit (
    id     BIGSERIAL    NOT NULL PRIMARY KEY,
    at     BIGINT       NOT NULL,
    actor  VARCHAR(255) NOT NULL,
    action VARCHAR(64)  NOT NULL,
    target VARCHAR(512) NOT NULL,
    detail TEXT         NOT NULL
);
CREATE INDEX shardcron_audit_at ON shardcron_audit (at);
CREATE INDEX shardcron_audit_actor_at ON shardcron_audit (actor, at);
CREATE INDEX shardcron_audit_action_at ON shardcron_audit (action, at);
