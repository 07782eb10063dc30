-- The fleet's devices (DESIGN.md, "Devices"). Times are Unix seconds (REAL), written by the server.
--   token_hash   sha256 (hex) of the device's token: the token itself is never stored.
--   last_seen    written in batches by each server process (heartbeats are the hot path).
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
    attributes TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attributes)),
    state TEXT NOT NULL CHECK (state IN ('accepted', 'pending')),
    pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    token_hash TEXT NOT NULL,
    registered REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE UNIQUE INDEX devices_token ON devices (token_hash);
CREATE INDEX devices_last_seen ON devices (last_seen);
CREATE INDEX devices_state ON devices (state, id);
-- What each device runs: the inventory, one row per package (filters by package, branch, version).
CREATE TABLE device_packages (
    device_id TEXT NOT NULL,
    package TEXT NOT NULL,
    branch TEXT NOT NULL,
    version TEXT NOT NULL,
    version_key TEXT NOT NULL,
    PRIMARY KEY (device_id, package)
);
CREATE INDEX device_packages_version ON device_packages (package, version_key, device_id);
CREATE INDEX device_packages_branch ON device_packages (package, branch, version_key, device_id);
CREATE TABLE device_tags (
    device_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_tag ON device_tags (tag, device_id);
-- Job reports. The same report twice (job, state, step and progress) is one row.
CREATE TABLE reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    package TEXT,
    state TEXT NOT NULL,
    step TEXT NOT NULL,
    progress INTEGER NOT NULL,
    to_key TEXT,
    body TEXT NOT NULL CHECK (json_valid(body)),
    received REAL NOT NULL
);
CREATE UNIQUE INDEX reports_identity ON reports (device_id, job_id, state, step, progress);
CREATE INDEX reports_device ON reports (device_id, seq);
-- The latest report per device and package (the device object's "jobs").
CREATE TABLE device_jobs (
    device_id TEXT NOT NULL,
    package TEXT NOT NULL,
    report_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, package)
);
