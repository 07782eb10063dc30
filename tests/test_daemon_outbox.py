"""The fleet outbox: durable, ordered, bounded."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from otakit.daemon.outbox import Outbox
from otakit.daemon.registry import fit_report
from otakit.protocol import MAX_REPORT_BYTES, JobReport


def report(n: int) -> dict[str, Any]:
    return {"id": f"job-{n}", "package": "app", "action": "install", "state": "running", "progress": n}


def drain(outbox: Outbox) -> list[str]:
    ids = []
    while (head := outbox.peek()) is not None:
        seq, body = head
        ids.append(body["id"])
        outbox.remove(seq)
    return ids


def test_reports_come_out_in_order_and_leave_only_when_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    assert outbox.peek() is None
    outbox.put([report(1), report(2)])
    outbox.put([report(3)])
    head = outbox.peek()
    assert head is not None
    assert head[1] == report(1)
    assert outbox.peek() == head  # peeking removes nothing
    assert len(outbox) == 3
    assert drain(outbox) == ["job-1", "job-2", "job-3"]
    assert list((tmp_path / "outbox").iterdir()) == []


def test_survives_reopening_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    first = Outbox(folder)
    first.put([report(n) for n in range(1, 13)])  # past 9 -> 10, so order is not string order by luck
    seq, _ = first.peek() or (0, {})
    first.remove(seq)
    again = Outbox(folder)
    assert len(again) == 11
    again.put([report(13)])
    assert drain(again) == [f"job-{n}" for n in range(2, 14)]


def test_new_reports_after_reopen_come_after_the_old_ones(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    Outbox(folder).put([report(1)])
    Outbox(folder).put([report(2)])
    assert drain(Outbox(folder)) == ["job-1", "job-2"]


def test_bounded_drops_the_oldest_and_logs_how_many(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(tmp_path / "outbox", limit=5)
    with caplog.at_level(logging.WARNING, logger="otakit.daemon"):
        assert outbox.put([report(n) for n in range(1, 5)]) == 0
        assert not caplog.records
        assert outbox.put([report(n) for n in range(5, 9)]) == 3
    assert len(outbox) == 5
    assert len(list((tmp_path / "outbox").iterdir())) == 5
    assert any("dropped the 3 oldest" in record.getMessage() for record in caplog.records)
    assert drain(Outbox(tmp_path / "outbox", limit=5)) == [f"job-{n}" for n in range(4, 9)]


def test_files_are_private_and_leftover_temp_files_go(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    outbox = Outbox(folder)
    outbox.put([report(1)])
    (path,) = folder.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (folder / ".00000000000000000002.json.tmp").write_text("{half")
    again = Outbox(folder)
    assert [p.name for p in folder.iterdir()] == [path.name]
    assert drain(again) == ["job-1"]


def test_an_unreadable_report_is_dropped_not_stuck(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "outbox"
    Outbox(folder).put([report(1), report(2)])
    first = sorted(folder.iterdir())[0]
    first.write_text("not json")
    with caplog.at_level(logging.ERROR, logger="otakit.daemon"):
        assert drain(Outbox(folder)) == ["job-2"]
    assert "unreadable" in caplog.text


def test_removing_twice_is_harmless(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    outbox.put([report(1), report(2)])
    seq, _ = outbox.peek() or (0, {})
    outbox.remove(seq)
    outbox.remove(seq)
    assert drain(outbox) == ["job-2"]


def test_a_huge_report_is_fitted_to_the_protocol() -> None:
    job = {
        **report(1),
        "step": "x" * 100,
        "error": "e" * 10_000,
        "log": ["line " + "y" * 5000] * 2001,
        "from_version": None,
        "to_version": "1.0",
    }
    fitted = fit_report(job)
    assert len(json.dumps(fitted).encode()) <= MAX_REPORT_BYTES
    assert len(JobReport.model_validate(fitted).log) > 100
    assert fitted["log"][-1] == job["log"][-1][:4000]
