-- Execution history, SQLite. Times are microseconds since the Unix epoch, UTC.
CREATE TABLE shardcron_executions (
    id            TEXT    NOT NULL PRIMARY KEY,
    has_record    INTEGER NOT NULL,
    job           TEXT    NOT NULL,
    item          INTEGER NOT NULL,
    total         INTEGER NOT NULL,
    fire_time     INTEGER NOT NULL,
    fire_time_end INTEGER,
    skipped_count INTEGER,
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    instance      TEXT    NOT NULL,
    host          TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    skip_reason   TEXT,
    attempt       INTEGER NOT NULL,
    token         INTEGER NOT NULL,
    cause         TEXT,
    output        TEXT,
    status_order  INTEGER NOT NULL
);
CREATE INDEX shardcron_executions_job_started ON shardcron_executions (job, started_at);
CREATE INDEX shardcron_executions_status_started ON shardcron_executions (status, started_at);
CREATE INDEX shardcron_executions_instance_status ON shardcron_executions (instance, status);
CREATE INDEX shardcron_executions_fire_time ON shardcron_executions (fire_time);
CREATE INDEX shardcron_executions_started ON shardcron_executions (started_at);

CREATE TABLE shardcron_transitions (
    seq          INTEGER NOT NULL PRIMARY KEY,
    execution_id TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    message      TEXT
);
CREATE UNIQUE INDEX shardcron_transitions_key ON shardcron_transitions (execution_id, at, state);
