-- The web console (DESIGN.md, "Web console"). Times are Unix seconds, written by the server.
--   users           operators; password_hash is otakit.passwords' salted scrypt hash, never the password.
--   sessions        one row per logged-in browser, by the sha256 of its session id (the cookie holds the
--                   id, signed); logging out deletes the row, so the old cookie opens nothing.
--   server_secrets  secrets generated on first start (the console's signing key), shared by every
--                   server process on this database and kept across restarts.
--   login_failures  failed logins per client address in the current minute (the login throttle).
CREATE TABLE users (
    name TEXT NOT NULL PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE sessions (
    id_hash TEXT NOT NULL PRIMARY KEY,
    user_name TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name);
CREATE INDEX sessions_expires ON sessions (expires);
CREATE TABLE server_secrets (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE login_failures (
    address TEXT NOT NULL PRIMARY KEY,
    window_start REAL NOT NULL,
    failures INTEGER NOT NULL
);
-- The console's overview lists the fleet's last failed jobs.
CREATE INDEX reports_state ON reports (state, seq);
