-- Execution history, PostgreSQL. Times are microseconds since the Unix epoch, UTC.
CREATE TABLE shardcron_executions (
    id            VARCHAR(64)  NOT NULL PRIMARY KEY,
    has_record    BIGINT       NOT NULL,
    job           VARCHAR(255) NOT NULL,
    item          BIGINT       NOT NULL,
    total         BIGINT       NOT NULL,
    fire_time     BIGINT       NOT NULL,
    fire_time_end BIGINT,
    skipped_count BIGINT,
    started_at    BIGINT       NOT NULL,
    ended_at      BIGINT,
    instance      VARCHAR(255) NOT NULL,
    host          VARCHAR(255) NOT NULL,
    source        VARCHAR(16)  NOT NULL,
    status        VARCHAR(16)  NOT NULL,
    skip_reason   VARCHAR(32),
    attempt       BIGINT       NOT NULL,
    token         BIGINT       NOT NULL,
    cause         TEXT,
    output        TEXT,
    status_order  BIGINT       NOT NULL
);
CREATE INDEX shardcron_executions_job_started ON shardcron_executions (job, started_at);
CREATE INDEX shardcron_executions_status_started ON shardcron_executions (status, started_at);
CREATE INDEX shardcron_executions_instance_status ON shardcron_executions (instance, status);
CREATE INDEX shardcron_executions_fire_time ON shardcron_executions (fire_time);
CREATE INDEX shardcron_executions_started ON shardcron_executions (started_at);

CREATE TABLE shardcron_transitions (
    seq          BIGSERIAL    NOT NULL PRIMARY KEY,
    execution_id VARCHAR(64)  NOT NULL,
    state        VARCHAR(16)  NOT NULL,
    at           BIGINT       NOT NULL,
    message      TEXT
);
CREATE UNIQUE INDEX shardcron_transitions_key ON shardcron_transitions (execution_id, at, state);
