-- Kept counts of devices (see migrations/sqlite/0005).
CREATE TABLE device_totals (
    dim VARCHAR(8) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    value VARCHAR(500) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (dim, value)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO device_totals (dim, value, n) SELECT 'all', '', COUNT(*) FROM devices;
INSERT INTO device_totals (dim, value, n) SELECT 'state', state, COUNT(*) FROM devices GROUP BY devices.state;
INSERT INTO device_totals (dim, value, n) SELECT 'tag', tag, COUNT(*) FROM device_tags GROUP BY device_tags.tag;
INSERT INTO device_totals (dim, value, n) SELECT 'p', package, COUNT(*) FROM device_packages GROUP BY device_packages.package;
INSERT INTO device_totals (dim, value, n)
    SELECT 'pv', CONCAT(package, '/', version_key), COUNT(*) FROM device_packages GROUP BY device_packages.package, device_packages.version_key;
INSERT INTO device_totals (dim, value, n)
    SELECT 'pb', CONCAT(package, '/', branch), COUNT(*) FROM device_packages GROUP BY device_packages.package, device_packages.branch;
INSERT INTO device_totals (dim, value, n)
    SELECT 'pbv', CONCAT(package, '/', branch, '/', version_key), COUNT(*) FROM device_packages
    GROUP BY device_packages.package, device_packages.branch, device_packages.version_key;
