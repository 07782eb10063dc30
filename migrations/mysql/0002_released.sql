-- Released or held (see migrations/sqlite/0002). Existing rows stay released (the default).
-- One statement: MySQL commits each DDL statement by itself, so the column and its index come together.
ALTER TABLE ota
    ADD COLUMN released TINYINT(1) NOT NULL DEFAULT 1,
    ADD KEY ota_name_branch_released_version (name, branch, released, version_key);
