-- Execution history, MySQL/MariaDB. Times are microseconds since the Unix epoch,
-- UTC. Binary collation: names compare exactly as on PostgreSQL and SQLite.
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
    cause         MEDIUMTEXT,
    output        MEDIUMTEXT,
    status_order  BIGINT       NOT NULL,
    INDEX shardcron_executions_job_started (job, started_at),
    INDEX shardcron_executions_status_started (status, started_at),
    INDEX shardcron_executions_instance_status (instance, status),
    INDEX shardcron_executions_fire_time (fire_time),
    INDEX shardcron_executions_started (started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE shardcron_transitions (
    seq          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    execution_id VARCHAR(64)  NOT NULL,
    state        VARCHAR(16)  NOT NULL,
    at           BIGINT       NOT NULL,
    message      TEXT,
    UNIQUE INDEX shardcron_transitions_key (execution_id, at, state)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
