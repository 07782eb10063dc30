-- Kept counts of devices (otakit.server.repository.device_totals), so that the device list's total is
-- one row whatever the fleet's size. Filled from what is there, so an existing database upgrades in place.
CREATE TABLE device_totals (
    dim TEXT NOT NULL,
    value TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (dim, value)
);
INSERT INTO device_totals (dim, value, n) SELECT 'all', '', COUNT(*) FROM devices;
INSERT INTO device_totals (dim, value, n) SELECT 'state', state, COUNT(*) FROM devices GROUP BY devices.state;
INSERT INTO device_totals (dim, value, n) SELECT 'tag', tag, COUNT(*) FROM device_tags GROUP BY device_tags.tag;
INSERT INTO device_totals (dim, value, n) SELECT 'p', package, COUNT(*) FROM device_packages GROUP BY device_packages.package;
INSERT INTO device_totals (dim, value, n)
    SELECT 'pv', package || '/' || version_key, COUNT(*) FROM device_packages GROUP BY device_packages.package, device_packages.version_key;
INSERT INTO device_totals (dim, value, n)
    SELECT 'pb', package || '/' || branch, COUNT(*) FROM device_packages GROUP BY device_packages.package, device_packages.branch;
INSERT INTO device_totals (dim, value, n)
    SELECT 'pbv', package || '/' || branch || '/' || version_key, COUNT(*) FROM device_packages
    GROUP BY device_packages.package, device_packages.branch, device_packages.version_key;
