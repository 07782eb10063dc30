-- Delta updates (DESIGN.md, "Delta updates and offline bundles"): one row per pair of stored files a
-- delta was asked for, keyed by their objects (immutable: a forced replacement has a new object, so a
-- stale delta is never served). state: making (owner holds it until lease_until, Unix seconds), ready
-- (object_id holds the delta, size bytes, sha256 its ETag) or none (it would not be much smaller than
-- the zip: devices download the zip). Times are Unix seconds, written by the server.
CREATE TABLE deltas (
    from_object TEXT NOT NULL,
    to_object TEXT NOT NULL,
    state TEXT NOT NULL,
    object_id TEXT,
    size INTEGER,
    sha256 TEXT,
    owner TEXT,
    lease_until REAL,
    created REAL NOT NULL,
    PRIMARY KEY (from_object, to_object)
);
CREATE INDEX deltas_object ON deltas (object_id);
