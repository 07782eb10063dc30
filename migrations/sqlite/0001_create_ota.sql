-- The seed's ota table, plus what makes it correct and fast:
--   version_key  byte-sortable form of the parsed version (otakit.versions.version_key);
--                unique per (name, branch), so 1.0 and 1.0.0 collide, and the same index
--                answers "highest version" with one backward index step.
--   object_id    the stored file's object (<files>/.objects/<object_id>); new for every upload.
CREATE TABLE ota (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    branch TEXT NOT NULL,
    content TEXT NOT NULL CHECK (json_valid(content)),
    version_key TEXT NOT NULL,
    object_id TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX ota_name_branch_version ON ota (name, branch, version_key);
CREATE INDEX ota_name_version ON ota (name, version_key);
CREATE UNIQUE INDEX ota_object ON ota (object_id);
