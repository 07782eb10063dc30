"""The device daemon: installs updates safely and answers a token-guarded local API."""
