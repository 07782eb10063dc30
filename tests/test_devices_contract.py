"""The devices aggregate's contract, run against SQLite and MySQL/MariaDB alike."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest

from otakit.errors import ConflictError
from otakit.protocol import DeviceUpdate, JobReport, PackageRef
from otakit.server.db.migrations import load_migrations
from otakit.server.repository import open_repository
from otakit.server.repository.devices import DeviceFilter, Devices
from otakit.versions import version_key

pytestmark = pytest.mark.anyio


@pytest.fixture
async def devices(repo_url: str) -> AsyncIterator[Devices]:
    async with open_repository(repo_url) as repository:
        await repository.upgrade()
        yield Devices(repository.driver)


def about(*packages: tuple[str, str, str], tags: list[str] | None = None, **extra: object) -> DeviceUpdate:
    refs = [PackageRef(package=p, branch=b, version=v) for p, b, v in packages]
    return DeviceUpdate.model_validate({"packages": refs, "tags": tags, **extra})


def report(
    job: str, state: str, *, package: str = "app", to: str = "2.0", step: str = "", progress: int = 0
) -> JobReport:
    return JobReport.model_validate(
        {"id": job, "package": package, "action": "update", "state": state, "step": step,
         "progress": progress, "from_version": "1.0", "to_version": to, "log": [f"{state} {step}"]}
    )  # fmt: skip


async def test_register_get_and_a_taken_id(devices: Devices) -> None:
    row = await devices.register(
        "dev-1",
        about(
            ("app", "major", "1.0"),
            tags=["eu", "eu", "line3"],
            description="<b>x</b>",
            attributes={"hw": "r2"},
        ),
        token_hash="a" * 64,
        state="accepted",
        now=1000.5,
    )
    assert (row.id, row.description, row.tags, row.attributes) == (
        "dev-1",
        "<b>x</b>",
        ["eu", "eu", "line3"],
        {"hw": "r2"},
    )
    assert (row.state, row.pinned, row.registered, row.last_seen) == ("accepted", False, 1000.5, 1000.5)
    assert row.packages == [{"package": "app", "branch": "major", "version": "1.0"}]
    assert await devices.by_token("a" * 64) == "dev-1"
    assert await devices.by_token("b" * 64) is None
    with pytest.raises(ConflictError):
        await devices.register("dev-1", about(), token_hash="c" * 64, state="accepted", now=1)
    with pytest.raises(ConflictError):  # ids are case-sensitive, tokens unique
        await devices.register("DEV-1", about(), token_hash="a" * 64, state="accepted", now=1)
    assert await devices.get("DEV-1") is None


async def test_update_changes_only_what_is_given(devices: Devices) -> None:
    await devices.register(
        "d", about(("app", "major", "1.0"), tags=["a"]), token_hash="1" * 64, state="pending", now=1
    )
    assert await devices.update("d", DeviceUpdate(description="new"))
    row = await devices.get("d")
    assert row is not None
    assert (row.description, row.tags, row.packages[0]["version"]) == ("new", ["a"], "1.0")
    assert await devices.update("d", about(("app", "major", "2.0"), ("base", "b", "0.1"), tags=[]))
    row = await devices.get("d")
    assert row is not None
    assert row.tags == []
    assert row.packages == [
        {"package": "app", "branch": "major", "version": "2.0"},
        {"package": "base", "branch": "b", "version": "0.1"},
    ]
    assert not await devices.update("gone", DeviceUpdate(description="x"))


async def test_touch_never_goes_backwards(devices: Devices) -> None:
    await devices.register("d", about(), token_hash="1" * 64, state="accepted", now=100)
    await devices.touch({"d": 200.0, "unknown": 300.0})
    await devices.touch({"d": 150.0})
    row = await devices.get("d")
    assert row is not None
    assert row.last_seen == 200.0


async def test_reports_are_idempotent_and_the_latest_per_package_is_kept(devices: Devices) -> None:
    await devices.register("d", about(), token_hash="1" * 64, state="accepted", now=1)
    first = await devices.add_report("d", report("j1", "running", step="download", progress=10), now=2)
    assert first is not None
    assert await devices.add_report("d", report("j1", "running", step="download", progress=10), now=3) is None
    assert await devices.add_report("d", report("j1", "running", step="download", progress=20), now=4)
    assert await devices.add_report("d", report("j1", "succeeded", step="record", progress=100), now=5)
    assert await devices.add_report("d", report("j2", "failed", package="base", to="0.2"), now=6)
    assert await devices.add_report("gone", report("j1", "running"), now=7) is None
    row = await devices.get("d")
    assert row is not None
    assert {package: job["state"] for package, job in row.jobs.items()} == {
        "app": "succeeded",
        "base": "failed",
    }
    listed = await devices.reports("d")
    assert [(r["id"], r["state"], r["progress"]) for r in listed] == [
        ("j2", "failed", 0),
        ("j1", "succeeded", 100),
        ("j1", "running", 20),
        ("j1", "running", 10),
    ]
    assert listed[0]["received"] == 6
    assert len(await devices.reports("d", limit=2)) == 2


async def test_filters_keyset_pages_and_totals(devices: Devices) -> None:
    for n in range(25):
        version = "1.0" if n % 2 else "2.0.0"
        tags = ["odd"] if n % 2 else ["even"]
        await devices.register(
            f"dev-{n:02d}", about(("app", "major" if n < 20 else "beta", version), tags=tags),
            token_hash=f"{n:064d}", state="pending" if n % 5 == 0 else "accepted", now=100 + n,
        )  # fmt: skip

    async def ids(where: DeviceFilter, limit: int = 1000) -> tuple[list[str], int]:
        seen, after, total = [], None, -1
        while True:
            page, after, total = await devices.page(where, after=after, limit=limit)
            assert len(page) <= limit
            seen += [device.id for device in page]
            if after is None:
                return seen, total

    everyone, total = await ids(DeviceFilter(), limit=7)
    assert everyone == [f"dev-{n:02d}" for n in range(25)]
    assert total == 25
    assert await ids(DeviceFilter(package="app", version="2.0")) == (
        [f"dev-{n:02d}" for n in range(0, 25, 2)], 13  # 2.0 finds 2.0.0
    )  # fmt: skip
    assert (await ids(DeviceFilter(package="app", branch="beta", version="1.0")))[0] == ["dev-21", "dev-23"]
    assert (await ids(DeviceFilter(tag="odd"), limit=3))[1] == 12
    assert (await ids(DeviceFilter(state="pending")))[0] == ["dev-00", "dev-05", "dev-10", "dev-15", "dev-20"]
    assert (await ids(DeviceFilter(online=True, seen_after=120)))[0] == [f"dev-{n}" for n in range(20, 25)]
    assert (await ids(DeviceFilter(online=False, seen_after=101)))[0] == ["dev-00"]
    assert await ids(DeviceFilter(package="nothing")) == ([], 0)
    page, following, _ = await devices.page(DeviceFilter(), after="dev-23", limit=5)
    assert ([d.id for d in page], following) == (["dev-24"], None)


async def test_accept_pin_and_delete(devices: Devices) -> None:
    await devices.register(
        "d", about(("app", "major", "1.0"), tags=["t"]), token_hash="1" * 64, state="pending", now=1
    )
    await devices.add_report("d", report("j1", "running"), now=2)
    assert await devices.accept("d")
    assert await devices.set_pinned("d", True)
    row = await devices.get("d")
    assert row is not None
    assert (row.state, row.pinned) == ("accepted", True)
    assert await devices.set_pinned("d", False)
    assert await devices.delete("d")
    assert await devices.get("d") is None
    assert await devices.by_token("1" * 64) is None
    assert await devices.reports("d") == []
    assert (await devices.page(DeviceFilter(tag="t"), after=None, limit=10))[2] == 0
    assert not await devices.delete("d")
    assert not await devices.accept("d")
    assert not await devices.set_pinned("d", True)
    # the id enrolls again, with nothing of the old record
    again = await devices.register("d", about(), token_hash="2" * 64, state="accepted", now=3)
    assert (again.packages, again.jobs, again.tags) == ([], {}, [])


async def test_concurrent_reports_of_one_device_are_all_kept(devices: Devices) -> None:
    await devices.register("d", about(), token_hash="1" * 64, state="accepted", now=1)
    seqs = await asyncio.gather(
        *(devices.add_report("d", report(f"j{n}", "running", progress=n), now=2) for n in range(20))
    )
    assert None not in seqs
    assert len(set(seqs)) == 20
    row = await devices.get("d")
    assert row is not None
    assert row.jobs["app"]["id"] == "j" + str(max(range(20), key=lambda n: seqs[n] or 0))


async def test_kept_totals_equal_counting(devices: Devices) -> None:
    """Whatever happens to devices, every total the list gives from a kept count equals COUNT(*)."""
    rng = random.Random(7)
    names = [f"d{n}" for n in range(12)]
    tags = ["a", "b", "c"]

    def inventory() -> DeviceUpdate:
        refs = [
            (p, rng.choice(["major", "beta"]), rng.choice(["1.0", "1.0.0", "2.0"]))
            for p in ("app", "base")
            if rng.random() < 0.7
        ]
        return about(*refs, tags=rng.sample(tags, rng.randint(0, 2)))

    filters = [
        DeviceFilter(), DeviceFilter(state="pending"), DeviceFilter(state="accepted"),
        *(DeviceFilter(tag=t) for t in tags),
        *(DeviceFilter(package=p, branch=b, version=v)
          for p in ("app", "base") for b in (None, "beta") for v in (None, "1.0", "2.0")),
    ]  # fmt: skip
    for step in range(120):
        device = rng.choice(names)
        action = rng.choice(["register", "update", "update", "accept", "delete"])
        if action == "register":
            with contextlib.suppress(ConflictError):
                await devices.register(
                    device,
                    inventory(),
                    token_hash=f"{step:064d}",
                    state=rng.choice(["pending", "accepted"]),
                    now=step,
                )
        elif action == "update":
            await devices.update(device, inventory())
        elif action == "accept":
            await devices.accept(device)
        else:
            await devices.delete(device)
        if step % 10 == 9:
            for where in filters:
                _, _, total = await devices.page(where, after=None, limit=1000)
                base, params, _ = where.sql()
                row = await devices.driver.fetch_one(f"SELECT COUNT(*) {base}", params)
                assert row is not None
                assert total == row[0], (step, where)


async def test_an_existing_fleet_gets_its_totals_at_upgrade(repo_url: str) -> None:
    migrations = load_migrations("sqlite" if repo_url.startswith("sqlite:") else "mysql")
    before = [m for m in migrations if m.number < 5]
    async with open_repository(repo_url) as repository:
        # A database of the release before the kept totals, with devices in it.
        async with repository.driver.transaction() as tx:
            await repository.driver.create_migrations_table(tx)
            for migration in before:
                for statement in migration.statements:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO otakit_migrations (number, name) VALUES (?, ?)",
                    (migration.number, migration.name),
                )
        old = Devices(repository.driver)
        for n, state in enumerate(("accepted", "pending", "accepted")):
            async with repository.driver.transaction() as tx:  # as the release before wrote them
                await tx.execute(
                    "INSERT INTO devices (id, description, tags, attributes, state, pinned, token_hash,"
                    " registered, last_seen) VALUES (?, '', '[]', '{}', ?, 0, ?, 1, 1)",
                    (f"d{n}", state, f"{n:064d}"),
                )
                await tx.execute("INSERT INTO device_tags (device_id, tag) VALUES (?, 't')", (f"d{n}",))
                await tx.execute(
                    "INSERT INTO device_packages (device_id, package, branch, version, version_key)"
                    " VALUES (?, 'app', 'major', '1.0', ?)",
                    (f"d{n}", version_key("1.0")),
                )
        assert await repository.upgrade() == [m.name for m in migrations if m.number >= 5]
        for where, expected in (
            (DeviceFilter(), 3), (DeviceFilter(state="pending"), 1), (DeviceFilter(tag="t"), 3),
            (DeviceFilter(package="app", version="1.0.0"), 3),
            (DeviceFilter(package="app", branch="beta"), 0),
        ):  # fmt: skip
            assert (await old.page(where, after=None, limit=10))[2] == expected, where
        await old.delete("d0")
        assert (await old.page(DeviceFilter(package="app"), after=None, limit=10))[2] == 2


async def test_search_matches_an_id_prefix_or_a_description_literally(devices: Devices) -> None:
    """``search``: the id starts with it or the description contains it, either case; ``%``, ``_``,
    ``!`` and ``\\`` are matched as themselves, never as wildcards or escapes."""
    for device_id, description, state in (
        ("Line3-A", "Pump at 50% duty", "accepted"),
        ("line3-b", "pump_2 spare", "pending"),
        ("line30", "a 50x duty pump", "accepted"),
        ("other", "serves line3-a's pump\\ (backup!)", "accepted"),
        ("x-line3", "pumpx2", "accepted"),
    ):
        await devices.register(
            device_id, about(tags=["t"], description=description),
            token_hash=device_id.lower().ljust(64, "0"), state=state, now=1,
        )  # fmt: skip

    async def found(search: str, state: str | None = None, tag: str | None = None) -> tuple[list[str], int]:
        where = DeviceFilter(search=search, state=state, tag=tag)
        page, _, total = await devices.page(where, after=None, limit=100)
        return [device.id for device in page], total

    assert await found("line3") == (["Line3-A", "line3-b", "line30", "other"], 4)  # ids by prefix only
    assert await found("LINE3-") == (["Line3-A", "line3-b", "other"], 3)
    assert await found("PUMP") == (["Line3-A", "line3-b", "line30", "other", "x-line3"], 5)
    assert await found("50%") == (["Line3-A"], 1)  # not "50x"
    assert await found("%") == (["Line3-A"], 1)
    assert await found("p_") == (["line3-b"], 1)  # not "px"
    assert await found("_") == (["line3-b"], 1)
    assert await found("\\") == (["other"], 1)
    assert await found("p\\ (backup!)") == (["other"], 1)
    assert await found("!)") == (["other"], 1)
    assert await found("nothing") == ([], 0)
    assert await found("pump", state="pending") == (["line3-b"], 1)
    assert await found("pump", tag="t") == (["Line3-A", "line3-b", "line30", "other", "x-line3"], 5)
    first, following, total = await devices.page(DeviceFilter(search="pump"), after=None, limit=2)
    rest, last, _ = await devices.page(DeviceFilter(search="pump"), after=following, limit=10)
    assert ([d.id for d in first + rest], total, last) == (
        ["Line3-A", "line3-b", "line30", "other", "x-line3"],
        5,
        None,
    )


async def test_versions_run_counts_devices_per_installed_version(devices: Devices) -> None:
    assert await devices.versions_run("app") == []
    fleet = {
        "a": [("app", "major", "1.0.0"), ("tool", "major", "9")],
        "b": [("app", "major", "1.0")],  # the same version as 1.0.0, spelled otherwise
        "c": [("app", "beta", "1.10.0")],  # any branch counts
        "d": [("app", "major", "1.9.0")],
        "e": [("app", "major", "1.10.0")],
        "f": [("tool", "major", "9")],
        "g": [],
    }
    for n, (device_id, packages) in enumerate(fleet.items()):
        await devices.register(device_id, about(*packages), token_hash=f"{n:064x}", state="accepted", now=1)
    # by PEP 440 order, highest first (1.10.0 > 1.9.0, though not as text); 1.0 and 1.0.0 are one
    assert await devices.versions_run("app") == [("1.10.0", 2), ("1.9.0", 1), ("1.0", 2)]
    assert await devices.versions_run("tool") == [("9", 2)]
    assert await devices.versions_run("APP") == []  # names are case-sensitive
    # an inventory change and a deletion move the counts
    await devices.update("d", about(("app", "major", "1.10.0")))
    await devices.delete("a")
    assert await devices.versions_run("app") == [("1.10.0", 3), ("1.0", 1)]
