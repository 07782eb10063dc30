"""Kept counts of devices, so that the device list's ``total`` costs one row whatever the fleet's size.

A count per dimension: every device (``all``), per state, per tag, and per package, package + version,
package + branch and package + branch + version of the inventory. Each change of a device (enrollment,
inventory, acceptance, deletion) moves them by the difference between what the device counted for
before and after it, in the change's own transaction. A filter that is no single dimension (``online``,
or two of them at once) is counted with ``COUNT(*)``.
"""

from __future__ import annotations

from collections import Counter

from otakit.errors import ConflictError
from otakit.server.db import Queries, Transaction
from otakit.server.db.columns import integer, text
from otakit.versions import version_key

__all__ = ["Dim", "count_of", "dim_of", "dims_of", "move"]

Dim = tuple[str, str]


async def dims_of(tx: Transaction, device_id: str) -> Counter[Dim]:
    """What ``device_id`` counts for now (nothing when it does not exist)."""
    found = await tx.fetch_one("SELECT state FROM devices WHERE id = ?", (device_id,))
    if found is None:
        return Counter()
    dims: Counter[Dim] = Counter({("all", ""): 1, ("state", text(found[0])): 1})
    for (tag,) in await tx.fetch("SELECT tag FROM device_tags WHERE device_id = ?", (device_id,)):
        dims[("tag", text(tag))] += 1
    for package, branch, key in await tx.fetch(
        "SELECT package, branch, version_key FROM device_packages WHERE device_id = ?", (device_id,)
    ):
        p, b, k = text(package), text(branch), text(key)
        for dim in (("p", p), ("pv", f"{p}/{k}"), ("pb", f"{p}/{b}"), ("pbv", f"{p}/{b}/{k}")):
            dims[dim] += 1
    return dims


async def move(tx: Transaction, before: Counter[Dim], after: Counter[Dim]) -> None:
    """Move the counts from ``before`` to ``after``, in a fixed order (so two changes never deadlock)."""
    for dim in sorted(set(before) | set(after)):
        delta = after[dim] - before[dim]
        if delta:
            await _add(tx, dim, delta)


async def _add(tx: Transaction, dim: Dim, delta: int) -> None:
    update = "UPDATE device_totals SET n = n + ? WHERE dim = ? AND value = ?"
    if (await tx.execute(update, (delta, *dim))).rowcount:
        return
    try:
        await tx.execute("INSERT INTO device_totals (dim, value, n) VALUES (?, ?, ?)", (*dim, delta))
    except ConflictError:  # another device's change made the row meanwhile (its insert came first)
        await tx.execute(update, (delta, *dim))


def dim_of(
    *,
    package: str | None,
    branch: str | None,
    version: str | None,
    tag: str | None,
    state: str | None,
    online: bool | None,
) -> Dim | None:
    """The one kept count a filter is, or None when it needs ``COUNT(*)``."""
    if online is not None:
        return None
    given = [
        package is not None or branch is not None or version is not None,
        tag is not None,
        state is not None,
    ]
    if sum(given) > 1:
        return None
    if tag is not None:
        return ("tag", tag)
    if state is not None:
        return ("state", state)
    if package is None:
        return ("all", "") if branch is None and version is None else None
    key = version_key(version) if version is not None else None
    if branch is None:
        return ("p", package) if key is None else ("pv", f"{package}/{key}")
    return ("pb", f"{package}/{branch}") if key is None else ("pbv", f"{package}/{branch}/{key}")


async def count_of(queries: Queries, dim: Dim) -> int:
    row = await queries.fetch_one("SELECT n FROM device_totals WHERE dim = ? AND value = ?", dim)
    return integer(row[0]) if row else 0
