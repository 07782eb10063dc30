-- Staged rollouts (see migrations/sqlite/0004).
CREATE TABLE rollouts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    package VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    branch VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    phases TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL CHECK (JSON_VALID(phases)),
    phase INT NOT NULL,
    state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    paused_reason TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    max_failure_rate DOUBLE NOT NULL,
    min_reports INT NOT NULL,
    phase_seconds DOUBLE NULL,
    tags TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL CHECK (JSON_VALID(tags)),
    created DOUBLE NOT NULL,
    updated DOUBLE NOT NULL,
    phase_started DOUBLE NOT NULL,
    succeeded INT NOT NULL DEFAULT 0,
    failed INT NOT NULL DEFAULT 0,
    in_progress INT NOT NULL DEFAULT 0,
    revision INT NOT NULL DEFAULT 0,
    active_key VARCHAR(201) CHARACTER SET ascii COLLATE ascii_bin NULL,
    UNIQUE KEY rollouts_active (active_key),
    KEY rollouts_package (package, branch, id),
    KEY rollouts_version (package, version_key, active_key),
    KEY rollouts_state (state, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE rollout_devices (
    rollout_id BIGINT NOT NULL,
    device_id VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    outcome VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
