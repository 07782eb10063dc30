"""The ``otakit`` command line."""

import sys

# httpx's own command-line tool is never used by otakit, and importing it (httpx does, when Rich and
# click are installed) loads Rich's syntax highlighting and pygments: ~45 ms of every command's
# start-up. With this entry that import fails, as when httpx's optional CLI extras are missing, a case
# httpx handles.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
