-- The change counter (otakit.server.repository.changes): every commit that changes what a server
-- process may cache (versions, rollouts, devices' tokens and pins) bumps it, and each process ends its
-- caches when it sees it move. One row; in the database, so it holds across hosts.
CREATE TABLE changes (
    id INTEGER NOT NULL PRIMARY KEY,
    counter BIGINT NOT NULL
);
INSERT INTO changes (id, counter) VALUES (1, 0);
