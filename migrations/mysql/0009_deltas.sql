-- Delta updates: see migrations/sqlite/0009_deltas.sql for the meaning of each column.
CREATE TABLE deltas (
    from_object CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    to_object CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state VARCHAR(10) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    object_id CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL,
    size BIGINT NULL,
    sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    owner VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
    lease_until DOUBLE NULL,
    created DOUBLE NOT NULL,
    PRIMARY KEY (from_object, to_object),
    KEY deltas_object (object_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
