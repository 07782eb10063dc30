"""The install journal (``otakit.daemon.journal``) on real folders: every crash point can be undone.

A crash is simulated at every ``os.replace`` the journal makes (each journal save ends with one, each
step is one), just before it and just after it: in-process by an exception nothing catches, and for a
few points for real, by a subprocess that dies with ``os._exit``. After each, ``Journal.pending()`` and
``undo()`` must give back the tree exactly as it was (names, kinds, bytes, modes, link targets).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from otakit.daemon.journal import Journal, Swap, remove_tree, sibling

Tree = dict[str, tuple[Any, ...]]
Plan = Callable[[Path], list[tuple[Path, Path]]]

V0 = {"app.txt": b"v0\n"}
V1 = {"app.txt": b"v1\n", "lib/common.txt": b"same\n", "only-v1.txt": b"old\n"}
V2 = {"app.txt": b"v2\n", "lib/common.txt": b"same\n", "lib/new.txt": b"new\n", "bin/run": b"#!/bin/sh\n"}


def snapshot(root: Path) -> Tree:
    """Every entry under ``root`` (hidden ones too): kind, and bytes + mode, or link target."""
    tree: Tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[rel] = ("dir",)
            else:
                tree[rel] = ("file", path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return tree


def fill(folder: Path, files: dict[str, bytes], *, link: bool = False) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if name.startswith("bin/"):
            path.chmod(0o755)
    if link:
        (folder / "current").symlink_to("app.txt")


# The updater's plans, on a folder ``root`` that holds the package folder ``root/app``.


def update_plan(root: Path) -> list[tuple[Path, Path]]:
    """An update with a kept previous version: prev -> trash, local -> prev, staged -> local."""
    local = root / "app"
    fill(local, V1, link=True)
    fill(sibling(local, "prev"), V0)
    fill(sibling(local, "new"), V2, link=True)
    prev, trash, stage = sibling(local, "prev"), sibling(local, "trash"), sibling(local, "new")
    return [(prev, trash), (local, prev), (stage, local)]


def first_update_plan(root: Path) -> list[tuple[Path, Path]]:
    """The first update (nothing kept yet): local -> prev, staged -> local."""
    local = root / "app"
    fill(local, V1)
    fill(sibling(local, "new"), V2)
    return [(local, sibling(local, "prev")), (sibling(local, "new"), local)]


def install_plan(root: Path) -> list[tuple[Path, Path]]:
    """A first install: staged -> local."""
    local = root / "app"
    fill(sibling(local, "new"), V1)
    return [(sibling(local, "new"), local)]


def rollback_plan(root: Path) -> list[tuple[Path, Path]]:
    """A rollback: local -> swap, prev -> local, swap -> prev."""
    local = root / "app"
    fill(local, V2, link=True)
    fill(sibling(local, "prev"), V1)
    swap = sibling(local, "swap")
    return [(local, swap), (sibling(local, "prev"), local), (swap, sibling(local, "prev"))]


def remove_plan(root: Path) -> list[tuple[Path, Path]]:
    """A removal: local -> trash."""
    local = root / "app"
    fill(local, V1)
    fill(sibling(local, "prev"), V0)
    return [(local, sibling(local, "trash"))]


PLANS: dict[str, Plan] = {
    "update": update_plan,
    "first-update": first_update_plan,
    "install": install_plan,
    "rollback": rollback_plan,
    "remove": remove_plan,
}


class Crash(BaseException):
    """Stands for the process dying: nothing in the journal catches a BaseException of its own."""


@contextmanager
def crash_at(call: int | None, *, after: bool) -> Iterator[list[int]]:
    """Make the ``call``-th ``os.replace`` (1-based) die just before or just after it renames.

    Yields a one-element list that ends up holding the number of calls made (with ``call=None``, none
    dies: it counts).
    """
    real = os.replace
    count = [0]

    def replace(source: Any, dest: Any) -> None:
        count[0] += 1
        if count[0] == call and not after:
            raise Crash
        real(source, dest)
        if count[0] == call and after:
            raise Crash

    os.replace = replace  # type: ignore[assignment]
    try:
        yield count
    finally:
        os.replace = real


def begin(journal: Journal, root: Path, renames: list[tuple[Path, Path]], action: str = "update") -> Swap:
    before = {"package": "app", "version": "1.0.0"}
    after = {"package": "app", "version": "2.0.0"}
    return journal.begin(action, "app", root / "app", before, after, renames)


def recover(journal: Journal) -> None:
    """What a restarted daemon does with an uncommitted change: undo it, forget it."""
    for swap in journal.pending():
        swap.undo()
        swap.finish()
    assert journal.pending() == []


def replace_calls(tmp_path: Path, plan: Plan) -> int:
    """How many os.replace calls beginning and running ``plan`` makes (journal saves and renames)."""
    root = tmp_path / "count"
    renames = plan(root)
    with crash_at(None, after=False) as count:
        begin(Journal(tmp_path / "count-journal"), root, renames).run()
    return count[0]


# --- the whole change, then undo ---


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
def test_run_then_undo_gives_back_the_original_tree(tmp_path: Path, plan: Plan) -> None:
    root = tmp_path / "root"
    journal = Journal(tmp_path / "journal")
    renames = plan(root)
    original = snapshot(root)
    swap = begin(journal, root, renames)
    swap.run()
    assert snapshot(root) != original
    (saved,) = journal.pending()
    assert saved.next_step == swap.next_step == len(renames)
    last_source, last_dest = renames[-1]
    assert not last_source.exists()
    assert last_dest.exists()
    swap.undo()
    assert snapshot(root) == original
    assert swap.next_step == 0
    swap.finish()
    assert not swap.path.exists()
    assert journal.pending() == []


def test_update_run_lays_out_new_local_and_keeps_the_previous(tmp_path: Path) -> None:
    root = tmp_path / "root"
    renames = update_plan(root)
    local = root / "app"
    before = {name: snapshot(path) for name, path in (("v1", local), ("v0", sibling(local, "prev")))}
    staged = snapshot(sibling(local, "new"))
    begin(Journal(tmp_path / "journal"), root, renames).run()
    assert snapshot(local) == staged
    assert snapshot(sibling(local, "prev")) == before["v1"]
    assert snapshot(sibling(local, "trash")) == before["v0"]
    assert not sibling(local, "new").exists()


def test_undo_after_a_run_that_was_undone_already_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    journal = Journal(tmp_path / "journal")
    renames = update_plan(root)
    original = snapshot(root)
    swap = begin(journal, root, renames)
    swap.run()
    swap.undo()
    (pending,) = journal.pending()  # undone, not yet finished: a crash here comes back to this
    pending.undo()
    assert snapshot(root) == original


def test_the_journal_file_round_trips(tmp_path: Path) -> None:
    root = tmp_path / "root"
    journal = Journal(tmp_path / "journal")
    renames = rollback_plan(root)
    swap = begin(journal, root, renames, action="rollback")
    swap.hooks_ran = True
    swap.next_step = 2
    swap.save()
    assert swap.path == tmp_path / "journal" / "app.json"
    assert json.loads(swap.path.read_bytes())["next_step"] == 2
    (loaded,) = journal.pending()
    assert loaded == swap
    swap.finish()
    swap.finish()  # twice is fine
    assert journal.pending() == []
    assert list((tmp_path / "journal").iterdir()) == []


def test_no_journal_folder_means_nothing_pending(tmp_path: Path) -> None:
    assert Journal(tmp_path / "absent").pending() == []


def test_a_step_whose_source_is_missing_is_skipped_and_undone_as_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    local = root / "app"
    fill(sibling(local, "new"), V1)
    original, staged = snapshot(root), snapshot(sibling(local, "new"))
    renames = [(local, sibling(local, "prev")), (sibling(local, "new"), local)]  # no local yet
    swap = begin(Journal(tmp_path / "journal"), root, renames)
    swap.run()
    assert snapshot(local) == staged
    assert not sibling(local, "prev").exists()
    swap.undo()
    assert snapshot(root) == original


def test_remove_tree_takes_folders_files_and_links(tmp_path: Path) -> None:
    folder, file, link = tmp_path / "folder", tmp_path / "file", tmp_path / "link"
    fill(folder, V2)
    file.write_bytes(b"x")
    link.symlink_to(folder)
    remove_tree(link)
    assert folder.is_dir()
    remove_tree(folder)
    remove_tree(file)
    remove_tree(tmp_path / "absent")
    assert list(tmp_path.iterdir()) == []


# --- a crash at every point of the change, then recovery ---


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
def test_a_crash_at_any_point_of_a_run_is_undone_exactly(tmp_path: Path, plan: Plan) -> None:
    calls = replace_calls(tmp_path, plan)
    assert calls == 2 * len(plan(tmp_path / "n")) + 2  # begin's save, (save, rename) per step, last save
    for call in range(1, calls + 1):
        for after in (False, True):
            where = tmp_path / f"{call}-{'after' if after else 'before'}"
            root = where / "root"
            journal = Journal(where / "journal")
            renames = plan(root)
            original = snapshot(root)
            with pytest.raises(Crash), crash_at(call, after=after):
                begin(journal, root, renames).run()
            recover(journal)
            assert snapshot(root) == original, f"crash at os.replace #{call}, {after=}"


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
def test_a_journal_saved_at_each_step_is_undone_whether_or_not_that_step_happened(
    tmp_path: Path, plan: Plan
) -> None:
    """Built by hand: the journal says step k is next, and the first k (or k + 1) renames are done."""
    steps = len(plan(tmp_path / "n"))
    for k in range(steps + 1):
        for in_hand_done in (False, True) if k < steps else (False,):
            where = tmp_path / f"{k}-{in_hand_done}"
            root = where / "root"
            journal = Journal(where / "journal")
            renames = plan(root)
            original = snapshot(root)
            swap = begin(journal, root, renames)
            swap.next_step = k
            swap.save()
            for source, dest in renames[: k + 1 if in_hand_done else k]:
                os.replace(source, dest)
            recover(journal)
            assert snapshot(root) == original, f"next_step={k}, step in hand done: {in_hand_done}"


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
def test_a_crash_while_undoing_is_undone_by_the_next_recovery(tmp_path: Path, plan: Plan) -> None:
    """The daemon can die again during recovery (or during an automatic rollback): undo twice."""
    steps = len(plan(tmp_path / "n"))
    for done in range(1, steps + 1):  # how far the change got before the first crash
        call = 0
        while True:
            call += 1
            where = tmp_path / f"{done}-{call}"
            root = where / "root"
            journal = Journal(where / "journal")
            renames = plan(root)
            original = snapshot(root)
            swap = begin(journal, root, renames)
            swap.renames, rest = swap.renames[:done], swap.renames[done:]
            swap.run()  # the first `done` renames, journaled
            swap.renames += rest
            swap.save()
            (pending,) = journal.pending()
            with crash_at(call, after=True) as count:
                try:
                    pending.undo()
                except Crash:
                    crashed = True
                else:
                    crashed = False
            recover(journal)
            assert snapshot(root) == original, f"{done} step(s) done, crash after undo's os.replace #{call}"
            if not crashed:
                assert count[0] < call
                break


# --- for real: a process that dies ---

_DIE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from otakit.daemon.journal import Journal

    folder, root, call, after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    renames = [(Path(a), Path(b)) for a, b in json.loads(sys.argv[5])]
    real, count = os.replace, 0

    def replace(source, dest):
        global count
        count += 1
        if count == call and not after:
            os._exit(137)
        real(source, dest)
        if count == call and after:
            os._exit(137)

    os.replace = replace
    Journal(folder).begin("update", "app", root / "app", {"version": "1.0.0"}, {"version": "2.0.0"},
                          renames).run()
    """
)


@pytest.mark.slow
def test_a_process_killed_at_each_replace_of_an_update_is_undone(tmp_path: Path) -> None:
    calls = replace_calls(tmp_path, update_plan)
    # Dying just after call n leaves the disk as dying just before call n + 1 does (but for a temp file).
    for call, after in [(1, False), *((n, True) for n in range(1, calls + 1))]:
        where = tmp_path / f"{call}-{int(after)}"
        root = where / "root"
        renames = update_plan(root)
        original = snapshot(root)
        plan = json.dumps([(str(a), str(b)) for a, b in renames])
        args = [str(where / "journal"), str(root), str(call), str(int(after)), plan]
        died = subprocess.run([sys.executable, "-c", _DIE, *args], check=False, timeout=60)
        assert died.returncode == 137
        recover(Journal(where / "journal"))
        assert snapshot(root) == original, f"killed at os.replace #{call}, {after=}"
