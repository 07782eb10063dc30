"""The install journal: folder swaps that a crash can always finish or undo.

A change to a package's files is a short list of renames (``local`` -> previous, staged -> ``local``,
...). Before each rename the journal records, durably, which step is next; the rename itself is
atomic. After a crash the journal says exactly which renames happened (the step in hand happened if
its source is gone), so they can be undone in reverse. The config file's record of the package is the
commit point: once it names the new version, the change stands and only cleanup remains.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otakit.fsutil import fsync_dir, write_atomically

__all__ = ["Journal", "Swap", "remove_tree", "sibling"]


def sibling(local: Path, tag: str) -> Path:
    """A hidden folder beside ``local`` (same file system, so renames are atomic)."""
    return local.parent / f".{local.name}.otakit-{tag}"


@dataclass
class Swap:
    """One journaled change of one package's files."""

    path: Path  # the journal file
    action: str  # install, update, rollback, remove
    package: str
    local: Path
    before: dict[str, Any] | None  # content.json of the version installed before (None: none)
    after: dict[str, Any] | None  # content.json the change installs (None: a removal)
    renames: list[tuple[str, str]] = field(default_factory=list)
    next_step: int = 0
    hooks_ran: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "package": self.package,
            "local": str(self.local),
            "before": self.before,
            "after": self.after,
            "renames": self.renames,
            "next_step": self.next_step,
            "hooks_ran": self.hooks_ran,
        }

    def save(self) -> None:
        write_atomically(self.path, json.dumps(self.to_json()).encode())

    def run(self) -> None:
        """Do the renames in order, journaling each before it happens."""
        while self.next_step < len(self.renames):
            self.save()
            source, dest = self.renames[self.next_step]
            if Path(source).exists() or Path(source).is_symlink():
                os.replace(source, dest)
                fsync_dir(Path(dest).parent)
            self.next_step += 1
        self.save()

    def undo(self) -> None:
        """Reverse the renames that happened, newest first (also after a crash mid-``run`` or mid-``undo``).

        Each reversal is journaled as it is done (``next_step`` counts down), so a crash during the undo
        leaves a journal that undoing again finishes, rather than one that would reverse twice.
        """
        done = self.next_step
        if done < len(self.renames):
            source, _ = self.renames[done]
            if not (Path(source).exists() or Path(source).is_symlink()):
                done += 1  # the step in hand had happened when the process died
        while done > 0:
            source, dest = self.renames[done - 1]
            if Path(dest).exists() or Path(dest).is_symlink():
                os.replace(dest, source)
                fsync_dir(Path(source).parent)
            done -= 1
            self.next_step = done
            self.save()
        self.next_step = 0
        self.save()

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


class Journal:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def begin(
        self,
        action: str,
        package: str,
        local: Path,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        renames: list[tuple[Path, Path]],
    ) -> Swap:
        self.folder.mkdir(parents=True, exist_ok=True)
        swap = Swap(
            self.folder / f"{package}.json",
            action,
            package,
            local,
            before,
            after,
            [(str(a), str(b)) for a, b in renames],
        )
        swap.save()
        return swap

    def pending(self) -> list[Swap]:
        if not self.folder.is_dir():
            return []
        for half_written in self.folder.glob(".*.tmp"):  # a save the process died in: never renamed in
            half_written.unlink(missing_ok=True)
        swaps = []
        for path in sorted(self.folder.glob("*.json")):
            data = json.loads(path.read_bytes())
            swaps.append(
                Swap(
                    path,
                    data["action"],
                    data["package"],
                    Path(data["local"]),
                    data["before"],
                    data["after"],
                    [(a, b) for a, b in data["renames"]],
                    data["next_step"],
                    data.get("hooks_ran", False),
                )
            )
        return swaps


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
