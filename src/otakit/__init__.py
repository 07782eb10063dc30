"""otakit: over-the-air updates for embedded and edge devices."""

__version__ = "0.1.0"
