-- Scale-out (DESIGN.md, "Scale-out"): what several server processes or hosts must agree on lives here.
-- See migrations/sqlite/0008_uploads.sql for the meaning of each column.
CREATE TABLE uploads (
    upload_id CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    owner VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    lease_until DOUBLE NOT NULL,
    name VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NULL,
    branch VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NULL,
    version VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created DOUBLE NOT NULL,
    KEY uploads_lease (lease_until)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
ALTER TABLE ota ADD COLUMN size BIGINT NULL, ADD COLUMN uploaded DOUBLE NULL;
