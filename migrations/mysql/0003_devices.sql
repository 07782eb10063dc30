-- The fleet's devices (see migrations/sqlite/0003). Times are Unix seconds, written by the server.
CREATE TABLE devices (
    id VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    description TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    tags LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (JSON_VALID(tags)),
    attributes LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (JSON_VALID(attributes)),
    state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    pinned TINYINT(1) NOT NULL DEFAULT 0,
    token_hash CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    registered DOUBLE NOT NULL,
    last_seen DOUBLE NOT NULL,
    UNIQUE KEY devices_token (token_hash),
    KEY devices_last_seen (last_seen),
    KEY devices_state (state, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE device_packages (
    device_id VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    package VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    branch VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (device_id, package),
    KEY device_packages_version (package, version_key, device_id),
    KEY device_packages_branch (package, branch, version_key, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE device_tags (
    device_id VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    tag VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (device_id, tag),
    KEY device_tags_tag (tag, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE reports (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    job_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    package VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NULL,
    state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    step VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    progress INT NOT NULL,
    to_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
    body LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (JSON_VALID(body)),
    received DOUBLE NOT NULL,
    UNIQUE KEY reports_identity (device_id, job_id, state, step, progress),
    KEY reports_device (device_id, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE device_jobs (
    device_id VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    package VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    report_seq BIGINT NOT NULL,
    PRIMARY KEY (device_id, package)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
