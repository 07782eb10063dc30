-- The seed's ota table, plus what makes it correct and fast (see migrations/sqlite/0001).
-- Names, branches and versions use a binary collation: they are case-sensitive, as on the file system.
-- content is the JSON text exactly as uploaded (MariaDB's JSON type is this same LONGTEXT + JSON_VALID).
CREATE TABLE ota (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    branch VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    content LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (JSON_VALID(content)),
    version_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    object_id CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    UNIQUE KEY ota_name_branch_version (name, branch, version_key),
    KEY ota_name_version (name, version_key),
    UNIQUE KEY ota_object (object_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
