-- The audit log, SQLite. `at` is microseconds since the Unix epoch, UTC; `detail`
-- is JSON text.
CREATE TABLE shardcron_audit (
    id     INTEGER NOT NULL PRIMARY KEY,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL
);
CREATE INDEX shardcron_audit_at ON shardcron_audit (at);
CREATE INDEX shardcron_audit_actor_at ON shardcron_audit (actor, at);
CREATE INDEX shardcron_audit_action_at ON shardcron_audit (action, at);
