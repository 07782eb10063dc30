-- Staged rollouts (DESIGN.md, "Rollouts"). Times are Unix seconds, written by the server.
--   active_key   "<package>/<branch>" while running or paused, else NULL: the unique index allows one
--                active rollout per package and branch, whichever server process creates it.
--   revision     bumped by every state change: changes are compare-and-set on it.
--   succeeded, failed, in_progress   kept up to date by each report, in the report's transaction.
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    package TEXT NOT NULL,
    branch TEXT NOT NULL,
    version TEXT NOT NULL,
    version_key TEXT NOT NULL,
    phases TEXT NOT NULL CHECK (json_valid(phases)),
    phase INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'aborted')),
    paused_reason TEXT,
    max_failure_rate REAL NOT NULL,
    min_reports INTEGER NOT NULL,
    phase_seconds REAL,
    tags TEXT NOT NULL CHECK (json_valid(tags)),
    created REAL NOT NULL,
    updated REAL NOT NULL,
    phase_started REAL NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    in_progress INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL DEFAULT 0,
    active_key TEXT
);
CREATE UNIQUE INDEX rollouts_active ON rollouts (active_key);
CREATE INDEX rollouts_package ON rollouts (package, branch, id);
CREATE INDEX rollouts_version ON rollouts (package, version_key, active_key);
CREATE INDEX rollouts_state ON rollouts (state, id);
-- Each device's outcome in a rollout: its latest report for the rollout's version.
CREATE TABLE rollout_devices (
    rollout_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
