-- The audit log, MySQL/MariaDB. `at` is microseconds since the Unix epoch, UTC;
-- `detail` is JSON text. Binary collation: names compare exactly as on
-- PostgreSQL and SQLite.
CREATE TABLE shardcron_audit (
    id     BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at     BIGINT       NOT NULL,
    actor  VARCHAR(255) NOT NULL,
    action VARCHAR(64)  NOT NULL,
    target VARCHAR(512) NOT NULL,
    detail MEDIUMTEXT   NOT NULL,
    INDEX shardcron_audit_at (at),
    INDEX shardcron_audit_actor_at (actor, at),
    INDEX shardcron_audit_action_at (action, at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
