"""deploy/cluster/run.py loaded as a module (``cluster_run``), for the benchmarks that reuse its
``Cluster`` and ``nginx_config``: a script, not a package, so it is loaded from its file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DEPLOY", "cluster_run"]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# run.py puts deploy/ on the path itself, for its own imports (supervise, seaweed).
_spec = importlib.util.spec_from_file_location("cluster_run", DEPLOY / "cluster" / "run.py")
assert _spec
assert _spec.loader
cluster_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_run)
