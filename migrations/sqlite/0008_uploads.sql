-- Scale-out (DESIGN.md, "Scale-out"): what several server processes or hosts must agree on lives here.
--   uploads   every upload (and version deletion) in flight, from before its first byte is stored until
--             its commit has ended; owner names the process (host, boot, pid, start time) and
--             lease_until (Unix seconds) how long the entry stays its own unless renewed. Recovery in any
--             process finishes or undoes an entry whose owner died (or whose lease ran out): the key it
--             names is reconciled, and its object, unless a row points at it, deleted.
--   ota.size, ota.uploaded   the stored file's length and the Unix time of its upload (NULL on rows of
--             earlier releases), so that no page needs the store to show them.
CREATE TABLE uploads (
    upload_id TEXT NOT NULL PRIMARY KEY,
    owner TEXT NOT NULL,
    lease_until REAL NOT NULL,
    name TEXT,
    branch TEXT,
    version TEXT,
    created REAL NOT NULL
);
CREATE INDEX uploads_lease ON uploads (lease_until);
ALTER TABLE ota ADD COLUMN size INTEGER;
ALTER TABLE ota ADD COLUMN uploaded REAL;
