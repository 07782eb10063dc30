from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import count, pairwise
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otakit.errors import ConflictError, ValidationError
from otakit.names import NAME_PATTERN
from otakit.rollout import (
    MAX_PHASES,
    Action,
    Counts,
    Device,
    Policy,
    Position,
    Report,
    Rollout,
    RolloutState,
    StoredVersion,
    bucket,
    classify,
    count_reports,
    due_to_advance,
    in_cohort,
    initial_position,
    offer,
    pause_reason,
    should_pause,
    transition,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
names = st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 100)


def _independent_bucket(package: str, branch: str, version: str, device: str) -> int:
    # Through the hex digest rather than int.from_bytes: a second route to the same number.
    hexdigest = hashlib.sha256("/".join([package, branch, version, device]).encode("utf-8")).hexdigest()
    return int(hexdigest[:16], 16) % 10000


def _rollout(percent: float = 1, **kwargs: Any) -> Rollout:
    phases = (percent, 100) if percent < 100 else (100,)
    policy = Policy(phases=phases, tags=kwargs.pop("tags", ()))
    state = kwargs.pop("state", "running" if percent < 100 else "completed")
    return Rollout("app", "main", kwargs.pop("version", "2.0.0"), policy, state, 0)


def _device_ids() -> Iterator[str]:
    return (f"dev-{i}" for i in count())


def _find(rollout: Rollout, wanted: Callable[[int], bool]) -> str:
    return next(
        d for d in _device_ids() if wanted(bucket(rollout.package, rollout.branch, rollout.version, d))
    )


# --- bucket -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "branch", "version", "device", "expected"),
    [
        # Computed once with `printf %s app/main/1.0.0/dev-1 | sha256sum`, first 16 hex digits, mod 10000.
        ("app", "main", "1.0.0", "dev-1", 7481),
        ("app", "main", "1.0.0", "dev-2", 7333),
        ("demo", "stable", "2.1", "a", 9092),
        ("app", "main", "1.0", "dev-1", 1729),  # the version as written: 1.0 and 1.0.0 draw differently
    ],
)
def test_bucket_known_values(package: str, branch: str, version: str, device: str, expected: int) -> None:
    assert bucket(package, branch, version, device) == expected


@given(
    package=names,
    branch=names,
    version=st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){0,3}", fullmatch=True),
    device=names,
)
def test_bucket_matches_independent_formula(package: str, branch: str, version: str, device: str) -> None:
    got = bucket(package, branch, version, device)
    assert got == _independent_bucket(package, branch, version, device)
    assert 0 <= got < 10000


# --- cohort -------------------------------------------------------------------------------------------


def test_cohort_only_grows_with_the_percentage() -> None:
    policy = Policy()
    rollouts = [Rollout("app", "main", "2.0.0", policy, "running", i) for i in range(4)]
    ids = [f"dev-{i}" for i in range(10000)]
    cohorts = [{d for d in ids if in_cohort(r, Device(d))} for r in rollouts]
    for smaller, larger in pairwise(cohorts):
        assert smaller < larger
    assert cohorts[-1] == set(ids)


@given(device=names, phases=st.lists(st.integers(1, 99), min_size=1, unique=True).map(sorted))
def test_a_device_in_stays_in(device: str, phases: list[int]) -> None:
    policy = Policy(phases=(*phases, 100))
    membership = [
        in_cohort(Rollout("app", "main", "2.0.0", policy, "running", i), Device(device))
        for i in range(len(policy.phases))
    ]
    assert membership == sorted(membership)  # False... then True...
    assert membership[-1]
    expected_first = _independent_bucket("app", "main", "2.0.0", device) < phases[0] * 100
    assert membership[0] == expected_first


def test_each_version_draws_a_different_first_percent() -> None:
    ids = [f"dev-{i}" for i in range(10000)]
    first = {d for d in ids if in_cohort(_rollout(1, version="2.0.0"), Device(d))}
    second = {d for d in ids if in_cohort(_rollout(1, version="2.0.1"), Device(d))}
    assert first
    assert second
    assert first != second
    assert len(first & second) < len(first) / 2  # independent draws overlap by about 1 % of 1 %


def test_one_percent_is_about_one_percent() -> None:
    rollout = _rollout(1)
    n = 100_000
    share = sum(in_cohort(rollout, Device(f"device-{i}")) for i in range(n)) / n
    assert 0.007 <= share <= 0.013


def test_fractional_percent_is_counted_in_whole_buckets() -> None:
    rollout = _rollout(0.07)  # 0.07 * 100 is 7.000000000000001 in floats: still 7 buckets, 0..6
    assert in_cohort(rollout, Device(_find(rollout, lambda b: b == 6)))
    assert not in_cohort(rollout, Device(_find(rollout, lambda b: b == 7)))


def test_bucket_edge_at_the_percentage() -> None:
    rollout = _rollout(10)
    assert in_cohort(rollout, Device(_find(rollout, lambda b: b == 999)))
    assert not in_cohort(rollout, Device(_find(rollout, lambda b: b == 1000)))


def test_tags_narrow_the_cohort() -> None:
    tagged = _rollout(50, tags=("lab", "beta"))
    inside = _find(tagged, lambda b: b < 5000)
    outside = _find(tagged, lambda b: b >= 5000)
    assert in_cohort(tagged, Device(inside, tags=frozenset({"beta", "eu"})))
    assert not in_cohort(tagged, Device(inside, tags=frozenset({"eu"})))
    assert not in_cohort(tagged, Device(inside))
    assert not in_cohort(tagged, Device(outside, tags=frozenset({"lab"})))
    untagged = _rollout(50)
    assert in_cohort(untagged, Device(inside, tags=frozenset({"eu"})))
    assert in_cohort(untagged, Device(inside))


def test_pinned_and_pending_devices_are_never_in() -> None:
    rollout = _rollout(100, state="running")
    assert in_cohort(rollout, Device("d"))
    assert not in_cohort(rollout, Device("d", pinned=True))
    assert not in_cohort(rollout, Device("d", state="pending"))


# --- what a device is offered -------------------------------------------------------------------------


@pytest.fixture
def half() -> Rollout:
    return _rollout(50, version="2.0.0")


def test_cohort_device_gets_the_rollout_version_while_running(half: Rollout) -> None:
    inside = Device(_find(half, lambda b: b < 5000), runs="1.0.0")
    outside = Device(_find(half, lambda b: b >= 5000), runs="1.0.0")
    assert offer(inside, half, "1.0.0") == "2.0.0"
    assert offer(outside, half, "1.0.0") == "1.0.0"
    assert offer(inside, None, "1.0.0") == "1.0.0"
    for state in ("paused", "completed", "aborted"):
        stopped = Rollout(half.package, half.branch, half.version, half.policy, state, 0)
        assert offer(inside, stopped, "1.0.0") == "1.0.0", state


def test_without_released_version_only_the_cohort_gets_one(half: Rollout) -> None:
    assert offer(Device(_find(half, lambda b: b < 5000)), half, None) == "2.0.0"
    assert offer(Device(_find(half, lambda b: b >= 5000)), half, None) is None
    assert offer(None, half, None) is None


def test_a_higher_release_beats_the_rollout(half: Rollout) -> None:
    inside = Device(_find(half, lambda b: b < 5000))
    assert offer(inside, half, "2.1") == "2.1"
    assert offer(inside, half, "2.0") == "2.0"  # equal as PEP 440: no need to switch
    assert offer(inside, half, "1.9") == "2.0.0"


def test_anonymous_and_pending_devices_get_the_released_version(half: Rollout) -> None:
    inside = _find(half, lambda b: b < 5000)
    assert offer(None, half, "1.0.0") == "1.0.0"
    assert offer(Device(inside, state="pending"), half, "1.0.0") == "1.0.0"


STORED = [
    StoredVersion("1.0.0", released=True),
    StoredVersion("1.1.0", released=False),
    StoredVersion("1.2.0", released=True),
    StoredVersion("1.3.0", released=False),
    StoredVersion("2.0.0", released=True),
]


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ("1.2.0", "1.2.0"),  # what it runs, released
        ("1.1.0", "1.1.0"),  # what it runs, held: still nothing to install
        ("1.1", "1.1.0"),  # PEP 440 equal, answered as stored
        ("1.2.5", "1.2.0"),  # gone: the highest released version not above it
        ("1.3.5", "1.2.0"),  # 1.3.0 is below but held: skipped
        ("0.9", None),  # nothing released at or below: 404
        ("3.0", "2.0.0"),  # never above what it runs, up to it
    ],
)
def test_pinned_device_gets_what_it_runs(half: Rollout, runs: str, expected: str | None) -> None:
    inside = _find(half, lambda b: b < 5000)
    assert offer(Device(inside, pinned=True, runs=runs), half, "2.0.0", reversed(STORED)) == expected
    assert offer(Device(inside, pinned=True, runs=runs), None, "2.0.0", STORED) == expected
    # A pin only holds back, also for a pending device.
    assert offer(Device(inside, state="pending", pinned=True, runs=runs), half, "2.0.0", STORED) == expected


def test_pinned_device_without_the_package_gets_the_released_version(half: Rollout) -> None:
    inside = _find(half, lambda b: b < 5000)
    assert offer(Device(inside, pinned=True), half, "1.0.0") == "1.0.0"


def test_pinned_device_needs_the_stored_versions() -> None:
    with pytest.raises(ValueError, match="stored"):
        offer(Device("d", pinned=True, runs="1.0"), None, "2.0")
    assert offer(Device("d", pinned=True, runs="1.0"), None, "2.0", []) is None


def test_device_inventory_version_must_be_valid() -> None:
    with pytest.raises(ValidationError):
        Device("d", runs="not a version")


# --- counting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("rolled_back", "failed"),
        ("queued", "in_progress"),
        ("running", "in_progress"),
        ("cancelled", None),
        ("", None),
    ],
)
def test_classify(state: str, outcome: str | None) -> None:
    assert classify(state) == outcome


def test_counts_of_states() -> None:
    counts = Counts.of(["succeeded", "failed", "rolled_back", "queued", "running", "succeeded", "odd"])
    assert counts == Counts(succeeded=2, failed=2, in_progress=2)
    assert counts.reported == 4
    assert counts.failure_rate == 0.5
    assert Counts().failure_rate == 0.0
    assert Counts(in_progress=5).failure_rate == 0.0
    assert Counts(succeeded=3, failed=1).failure_rate == 0.25


def test_count_reports_takes_each_devices_latest_matching_report() -> None:
    at = [T0 + timedelta(minutes=i) for i in range(10)]
    reports = [
        Report("a", "2.0.0", "failed", at[0] - timedelta(seconds=1)),  # before the rollout: ignored
        Report("a", "2.0.0", "running", at[1]),
        Report("a", "2.0", "succeeded", at[2]),  # same version as written differently
        Report("b", "2.0.0", "running", at[0]),  # exactly at the start: counts
        Report("c", "2.0.0", "rolled_back", at[3]),
        Report("c", "2.1.0", "succeeded", at[4]),  # another version: does not hide c's failure
        Report("d", None, "failed", at[5]),
        Report("e", "garbage version", "failed", at[5]),
        Report("f", "1.0.0", "failed", at[6]),
        Report("g", "2.0.0", "succeeded", at[6]),
        Report("g", "2.0.0", "failed", at[7]),  # later: wins
    ]
    assert count_reports(reports, "2.0.0", started=at[0]) == Counts(succeeded=1, failed=2, in_progress=1)
    assert count_reports(reports, "2.0.0", started=at[3]) == Counts(succeeded=0, failed=2, in_progress=0)
    assert count_reports([], "2.0.0", started=at[0]) == Counts()


# --- auto-pause ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("succeeded", "failed", "max_rate", "min_reports", "pauses"),
    [
        (57, 3, 0.05, 20, False),  # 3 / 60 is exactly 5 %: not above
        (57, 4, 0.05, 20, True),  # one more failure is
        (19, 1, 0.05, 20, False),  # 1 / 20
        (18, 2, 0.05, 20, True),  # 2 / 20
        (0, 1, 0.05, 20, False),  # 1 / max(1, 20) = 5 %
        (0, 2, 0.05, 20, True),  # 2 / max(2, 20) = 10 %
        (0, 0, 0.05, 20, False),
        (0, 0, 0.05, 0, False),  # 0 / 0: no pause, no ZeroDivisionError
        (0, 0, 0.0, 0, False),
        (0, 1, 0.05, 0, True),  # min_reports 0: 1 / 1
        (1, 0, 0.0, 0, False),
        (99, 1, 0.0, 20, True),  # rate 0: any failure pauses
        (0, 100, 1.0, 20, False),  # rate 1: nothing pauses
        (7, 3, 0.3, 0, False),  # 3 / 10 vs 0.3, which a float holds just below 3/10
        (6, 4, 0.3, 0, True),
    ],
)
def test_should_pause_edges(
    succeeded: int, failed: int, max_rate: float, min_reports: int, pauses: bool
) -> None:
    assert should_pause(Counts(succeeded, failed, in_progress=50), max_rate, min_reports) is pauses


@given(
    succeeded=st.integers(0, 10_000),
    failed=st.integers(0, 10_000),
    permille=st.integers(0, 1000),
    min_reports=st.integers(0, 500),
)
def test_should_pause_is_the_exact_inequality(
    succeeded: int, failed: int, permille: int, min_reports: int
) -> None:
    rate_text = f"{permille / 1000}"
    denominator = max(succeeded + failed, min_reports)
    exact = denominator > 0 and Fraction(failed, denominator) > Fraction(rate_text)
    assert should_pause(Counts(succeeded, failed), float(rate_text), min_reports) is exact


def test_pause_reason_names_the_figures() -> None:
    assert (
        pause_reason(Counts(succeeded=37, failed=3), 0.05, 20)
        == "3 of 40 reported installs failed (7.5 % > 5.0 %); paused automatically"
    )
    assert (
        pause_reason(Counts(succeeded=3, failed=2), 0.05, 20)
        == "2 of 5 reported installs failed (2 of the minimum 20 = 10.0 % > 5.0 %); paused automatically"
    )
    assert (
        pause_reason(Counts(failed=1), 0.05, 0)
        == "1 of 1 reported install failed (100.0 % > 5.0 %); paused automatically"
    )


def test_pause_reason_shows_enough_digits_to_tell_rate_and_limit_apart() -> None:
    reason = pause_reason(Counts(succeeded=18999, failed=1001), 0.05, 20)  # 5.005 %
    assert "(5.005 % > 5.000 %)" in reason


def test_pause_reason_without_reports_does_not_divide_by_zero() -> None:
    assert pause_reason(Counts(), 0.05, 0).startswith("0 of 0 reported installs failed (0.0 % <= 5.0 %)")


# --- policy validation --------------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = Policy()
    assert policy.phases == (1, 10, 50, 100)
    assert policy.max_failure_rate == 0.05
    assert policy.min_reports == 20
    assert policy.phase_seconds is None
    assert policy.tags == ()


@pytest.mark.parametrize(
    "phases",
    [
        (100,),
        (1, 100),
        (0.5, 100),
        (0.01, 100),
        (0.07, 2.5, 100.0),
        (1, 10, 50, 100),
        tuple(range(1, 101)),
    ],
)
def test_good_phases(phases: tuple[float, ...]) -> None:
    assert Policy(phases=phases).phases == phases


def test_phases_given_as_a_list_become_a_tuple() -> None:
    assert Policy(phases=[5, 100]).phases == (5, 100)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phases", "message"),
    [
        ((), "non-empty"),
        ("1,100", "non-empty"),
        (None, "non-empty"),
        ((0, 100), r"\(0, 100\]"),
        ((-1, 100), r"\(0, 100\]"),
        ((1, 101), r"\(0, 100\]"),
        ((101,), r"\(0, 100\]"),
        ((10, 1, 100), "strictly increasing"),
        ((1, 1, 100), "strictly increasing"),
        ((1, 100, 100), "strictly increasing"),
        ((1, 50), "last phase must be 100"),
        ((50,), "last phase must be 100"),
        ((True, 100), "not a percentage"),
        (("10", 100), "not a percentage"),
        ((float("nan"), 100), "not a percentage"),
        ((1, float("inf")), "not a percentage"),
        ((0.005, 100), "finer than"),
        ((*range(1, 100), 99.5, 100), "at most"),
    ],
)
def test_bad_phases(phases: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Policy(phases=phases)


def test_phase_count_limit() -> None:
    ok = (*(i / 100 for i in range(1, MAX_PHASES)), 100)
    assert len(Policy(phases=ok).phases) == MAX_PHASES
    with pytest.raises(ValidationError, match="at most"):
        Policy(phases=(0.001, *ok))


@pytest.mark.parametrize("rate", [0, 0.0, 0.05, 0.5, 1, 1.0])
def test_good_failure_rate(rate: float) -> None:
    assert Policy(max_failure_rate=rate).max_failure_rate == rate


@pytest.mark.parametrize("rate", [-0.01, 1.01, 2, float("nan"), float("inf"), True, "0.05", None])
def test_bad_failure_rate(rate: Any) -> None:
    with pytest.raises(ValidationError, match="max_failure_rate"):
        Policy(max_failure_rate=rate)


@pytest.mark.parametrize("reports", [0, 1, 20, 10**6])
def test_good_min_reports(reports: int) -> None:
    assert Policy(min_reports=reports).min_reports == reports


@pytest.mark.parametrize("reports", [-1, 1.5, 20.0, True, "20", None])
def test_bad_min_reports(reports: Any) -> None:
    with pytest.raises(ValidationError, match="min_reports"):
        Policy(min_reports=reports)


@pytest.mark.parametrize("seconds", [None, 0.5, 1, 3600])
def test_good_phase_seconds(seconds: float | None) -> None:
    assert Policy(phase_seconds=seconds).phase_seconds == seconds


@pytest.mark.parametrize("seconds", [0, 0.0, -1, float("nan"), float("inf"), True, "60"])
def test_bad_phase_seconds(seconds: Any) -> None:
    with pytest.raises(ValidationError, match="phase_seconds"):
        Policy(phase_seconds=seconds)


def test_tags_are_names_without_repeats() -> None:
    assert Policy(tags=("lab", "beta", "lab")).tags == ("lab", "beta")


@pytest.mark.parametrize("tags", [("ok", "bad/tag"), ("",), ("..",), (5,), "lab", None])
def test_bad_tags(tags: Any) -> None:
    with pytest.raises(ValidationError, match="tag"):
        Policy(tags=tags)


def test_rollout_start() -> None:
    assert Rollout.start("app", "main", "2.0", Policy()) == Rollout(
        "app", "main", "2.0", Policy(), "running", 0
    )
    only = Policy(phases=(100,))
    started = Rollout.start("app", "main", "2.0", only)
    assert (started.state, started.phase, started.percent) == ("completed", 0, 100)
    with pytest.raises(ValidationError, match="package"):
        Rollout.start("../app", "main", "2.0", Policy())
    with pytest.raises(ValidationError, match="branch"):
        Rollout.start("app", "", "2.0", Policy())
    with pytest.raises(ValidationError, match="version"):
        Rollout.start("app", "main", "two", Policy())


def test_rollout_percent_and_phase_range() -> None:
    assert Rollout("app", "main", "2.0", Policy(), "running", 2).percent == 50
    with pytest.raises(ValueError, match="phase"):
        Rollout("app", "main", "2.0", Policy(), "running", 4)


# --- states and transitions ---------------------------------------------------------------------------

PHASES = (1, 10, 50, 100)
ALLOWED: dict[tuple[str, str], Position] = {
    ("running", "advance"): Position("running", 2),
    ("running", "pause"): Position("paused", 1),
    ("running", "abort"): Position("aborted", 1),
    ("running", "release"): Position("completed", 3),
    ("paused", "resume"): Position("running", 1),
    ("paused", "abort"): Position("aborted", 1),
    ("paused", "release"): Position("completed", 3),
}
STATES: tuple[RolloutState, ...] = get_args(RolloutState)
ACTIONS: tuple[Action, ...] = get_args(Action)


def test_the_literals_cover_the_design() -> None:
    assert set(STATES) == {"running", "paused", "completed", "aborted"}
    assert {"advance", "pause", "resume", "abort"} <= set(ACTIONS)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("action", ACTIONS)
def test_every_transition(state: RolloutState, action: Action) -> None:
    expected = ALLOWED.get((state, action))
    if expected is None:
        with pytest.raises(ConflictError, match=f"cannot {action} a rollout that is {state}"):
            transition(state, action, 1, PHASES)
    else:
        assert transition(state, action, 1, PHASES) == expected


def test_advance_walks_the_phases_and_completes_at_100() -> None:
    position = initial_position(PHASES)
    seen = [position]
    for _ in range(len(PHASES) - 1):
        position = transition(position.state, "advance", position.phase, PHASES)
        seen.append(position)
    assert seen == [
        Position("running", 0),
        Position("running", 1),
        Position("running", 2),
        Position("completed", 3),
    ]
    assert transition("running", "advance", 0, (5, 100)) == Position("completed", 1)


def test_single_phase_rollout_completes_at_creation() -> None:
    assert initial_position((100,)) == Position("completed", 0)
    assert initial_position((50, 100)) == Position("running", 0)


def test_transition_rejects_a_phase_outside_the_phases() -> None:
    with pytest.raises(ValueError, match="phase"):
        transition("running", "advance", 4, PHASES)
    with pytest.raises(ValueError, match="phase"):
        transition("running", "advance", -1, PHASES)


def test_conflict_messages_say_why() -> None:
    with pytest.raises(ConflictError, match="resume is allowed only from paused"):
        transition("running", "resume", 0, PHASES)
    with pytest.raises(ConflictError, match="it has ended"):
        transition("completed", "abort", 3, PHASES)


# --- phase_seconds ------------------------------------------------------------------------------------


def test_due_to_advance_at_the_boundary() -> None:
    assert due_to_advance("running", T0, 3600, T0 + timedelta(seconds=3600))
    assert due_to_advance("running", T0, 3600, T0 + timedelta(days=2))
    assert not due_to_advance("running", T0, 3600, T0 + timedelta(seconds=3600, microseconds=-1))
    assert not due_to_advance("running", T0, 3600, T0)
    assert due_to_advance("running", T0, 0.5, T0 + timedelta(milliseconds=500))
    assert not due_to_advance("running", T0, 0.5, T0 + timedelta(milliseconds=499))


@pytest.mark.parametrize("state", ["paused", "completed", "aborted"])
def test_only_running_rollouts_advance_by_themselves(state: RolloutState) -> None:
    assert not due_to_advance(state, T0, 60, T0 + timedelta(days=1))


def test_without_phase_seconds_nothing_advances_by_itself() -> None:
    assert not due_to_advance("running", T0, None, T0 + timedelta(days=365))
