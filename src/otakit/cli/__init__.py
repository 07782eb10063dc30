"""The ``otakit`` command line."""
