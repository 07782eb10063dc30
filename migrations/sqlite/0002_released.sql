-- Released or held (DESIGN.md, "Versions: released or held"): a held version is stored, listed and
-- downloadable, but /latestVersion does not offer it. Existing rows stay released (the default), so an
-- existing database upgrades in place.
-- The index answers "highest released version" with one backward index step.
ALTER TABLE ota ADD COLUMN released INTEGER NOT NULL DEFAULT 1 CHECK (released IN (0, 1));
CREATE INDEX ota_name_branch_released_version ON ota (name, branch, released, version_key);
