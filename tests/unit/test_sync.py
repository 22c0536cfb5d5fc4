"""Pure decisions of the hub–agent link (hub/sync.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.store.repo import AppliedRecord, ObjectRecord
from hub.sync import Delta, LivenessPolicy, Phase, delta_for, phase, progress, resync

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def obj(i: str, version: int, site: str = "", node: str = "", *, deleted: bool = False, kind: str = "Config") -> ObjectRecord:
    return ObjectRecord(i, kind, f"name-{i}", version, {"v": version}, site, node, deleted, T0)


# -- resync -------------------------------------------------------------------


def test_resync_sends_only_newer_versions():
    wanted = [obj("a", 3), obj("b", 5), obj("c", 7)]
    d = resync({"a": 3, "b": 4}, wanted)
    assert [o.id for o in d.upserts] == ["b", "c"]
    assert d.deletes == ()


def test_resync_agent_ahead_of_hub_is_not_downgraded():
    # An agent that somehow holds a newer version than the hub's is left alone.
    assert not resync({"a": 9}, [obj("a", 3)])


def test_resync_deletes_held_ids_no_longer_meant():
    d = resync({"a": 1, "gone": 2, "also-gone": 4}, [obj("a", 1)])
    assert d.upserts == ()
    assert d.deletes == ("also-gone", "gone")  # sorted, deterministic


def test_resync_nothing_to_do_is_falsy():
    assert not resync({}, [])
    assert not resync({"a": 2}, [obj("a", 2)])
    assert bool(Delta(deletes=("x",)))


# -- delta_for ----------------------------------------------------------------


def test_delta_for_targets_by_site_and_node():
    changed = [
        obj("all", 1),
        obj("fra", 2, site="fra"),
        obj("fra-a", 3, site="fra", node="a"),
        obj("fra-b", 4, site="fra", node="b"),
        obj("par", 5, site="par"),
        obj("any-a", 6, node="a"),
    ]
    assert [o.id for o in delta_for("fra", "a", {}, changed).upserts] == ["all", "fra", "fra-a", "any-a"]
    assert [o.id for o in delta_for("fra", "b", {}, changed).upserts] == ["all", "fra", "fra-b"]
    assert [o.id for o in delta_for("par", "a", {}, changed).upserts] == ["all", "par", "any-a"]
    assert [o.id for o in delta_for("waw", "z", {}, changed).upserts] == ["all"]


def test_delta_for_skips_versions_already_held():
    d = delta_for("s", "n", {"a": 5, "b": 1}, [obj("a", 5), obj("b", 6)])
    assert [(o.id, o.version) for o in d.upserts] == [("b", 6)]


def test_delta_for_tombstone_deletes_only_where_held():
    tomb = obj("a", 9, deleted=True)
    assert delta_for("s", "n", {"a": 3}, [tomb]).deletes == ("a",)
    assert not delta_for("s", "n", {}, [tomb])


def test_delta_for_retarget_away_deletes_on_old_node():
    # Object moved from site fra to site par: fra's copy is deleted, par gets it.
    moved = obj("a", 4, site="par")
    assert delta_for("fra", "n", {"a": 2}, [moved]).deletes == ("a",)
    assert [o.id for o in delta_for("par", "n", {}, [moved]).upserts] == ["a"]
    # A node that never held it and is not targeted gets nothing.
    assert not delta_for("waw", "n", {}, [moved])


# -- phase --------------------------------------------------------------------

POLICY = LivenessPolicy(timedelta(seconds=5), timedelta(seconds=15), timedelta(seconds=60))


@pytest.mark.parametrize(
    ("age_s", "connected", "expected"),
    [
        (0, True, Phase.CONNECTED),
        (15, True, Phase.CONNECTED),          # boundary: stale_after itself is still fresh
        (15.001, True, Phase.STALE),
        (0, False, Phase.STALE),              # stream closed, heartbeat fresh: Stale, not Unreachable
        (60, True, Phase.STALE),              # boundary: unreachable_after itself is still Stale
        (60, False, Phase.STALE),
        (60.001, True, Phase.UNREACHABLE),
        (3600, False, Phase.UNREACHABLE),
    ],
)
def test_phase_boundaries(age_s, connected, expected):
    now = T0 + timedelta(hours=1)
    assert phase(now - timedelta(seconds=age_s), now, connected, POLICY) is expected


def test_phase_best():
    assert Phase.best([Phase.UNREACHABLE, Phase.STALE]) is Phase.STALE
    assert Phase.best([Phase.STALE, Phase.CONNECTED, Phase.UNREACHABLE]) is Phase.CONNECTED
    assert Phase.best([]) is Phase.UNREACHABLE


# -- LivenessPolicy -----------------------------------------------------------


@pytest.mark.parametrize(
    ("hb", "stale", "unreach"),
    [(0, 15, 60), (-1, 15, 60), (5, 5, 60), (20, 15, 60), (5, 60, 60), (5, 60, 15)],
)
def test_liveness_policy_rejects_bad_orderings(hb, stale, unreach):
    with pytest.raises(ValueError, match="heartbeat_interval < stale_after < unreachable_after"):
        LivenessPolicy(timedelta(seconds=hb), timedelta(seconds=stale), timedelta(seconds=unreach))


def test_liveness_policy_default_is_valid():
    p = LivenessPolicy()
    assert p.heartbeat_interval < p.stale_after < p.unreachable_after


# -- progress -----------------------------------------------------------------


def ack(object_id: str, version: int, ok: bool = True, error: str = "") -> AppliedRecord:
    return AppliedRecord(1, object_id, version, ok, error, T0)


def test_progress_empty():
    p = progress([], {})
    assert (p.desired_version, p.applied_version, p.objects_desired, p.objects_applied) == (0, 0, 0, 0)
    assert p.in_sync


def test_progress_applied_version_is_the_intact_prefix():
    wanted = [obj("c", 7), obj("a", 2), obj("b", 5)]  # unordered on purpose
    p = progress(wanted, {"a": ack("a", 2), "c": ack("c", 7)})  # b (v5) missing
    assert p.desired_version == 7
    assert p.applied_version == 2
    assert (p.objects_applied, p.objects_desired) == (2, 3)
    assert not p.in_sync
    p = progress(wanted, {"a": ack("a", 2), "b": ack("b", 5), "c": ack("c", 7)})
    assert (p.applied_version, p.objects_applied) == (7, 3)
    assert p.in_sync


def test_progress_old_version_applied_does_not_count():
    p = progress([obj("a", 4)], {"a": ack("a", 3)})
    assert (p.applied_version, p.objects_applied, p.failed) == (0, 0, ())


def test_progress_failures_are_named():
    wanted = [obj("a", 2), obj("b", 5)]
    p = progress(wanted, {"a": ack("a", 2), "b": ack("b", 5, ok=False, error="disk full")})
    assert p.failed == ("Config/name-b: disk full",)
    assert (p.applied_version, p.objects_applied) == (2, 1)
    # A failure of an older version is stale news: not reported for the new one.
    p = progress([obj("b", 6)], {"b": ack("b", 5, ok=False, error="disk full")})
    assert p.failed == ()


# -- property -----------------------------------------------------------------

ids = st.sampled_from([f"o{i}" for i in range(12)])


@st.composite
def held_and_wanted(draw):
    held = draw(st.dictionaries(ids, st.integers(1, 50), max_size=12))
    wanted_versions = draw(st.dictionaries(ids, st.integers(1, 50), max_size=12))
    wanted = [obj(i, v) for i, v in sorted(wanted_versions.items(), key=lambda kv: kv[1])]
    return held, wanted


def apply(held: dict[str, int], d: Delta) -> dict[str, int]:
    out = dict(held)
    for o in d.upserts:
        out[o.id] = o.version
    for i in d.deletes:
        out.pop(i, None)
    return out


@settings(max_examples=150, deadline=None)
@given(held_and_wanted())
def test_property_resync_converges(hw):
    held, wanted = hw
    d = resync(held, wanted)
    target = {o.id: o.version for o in wanted}
    # Any held map, an agent ahead of the hub included (e.g. a hub restored from an older backup): the
    # result is exactly the hub's target, except that an object the agent holds at a newer version keeps
    # that version (no downgrade) and is neither sent nor deleted.
    ahead = {i for i, v in held.items() if i in target and v > target[i]}
    result = apply(held, d)
    assert result == {**target, **{i: held[i] for i in ahead}}
    assert not {o.id for o in d.upserts} & ahead and not set(d.deletes) & ahead
    assert not resync(result, wanted)  # converged: a second resync sends nothing
    # Only what was needed was sent: nothing the agent already had at that version.
    assert all(held.get(o.id, -1) < o.version for o in d.upserts)
    assert not set(d.deletes) & set(target)


@st.composite
def hub_consistent(draw):
    """wanted, and a held map whose versions were all once assigned by the hub
    (<= the current version for live ids; anything for ids since deleted)."""
    wanted_versions = draw(st.dictionaries(ids, st.integers(1, 50), max_size=12))
    held = {}
    for i, v in wanted_versions.items():
        if draw(st.booleans()):
            held[i] = draw(st.integers(1, v))
    extra = draw(st.dictionaries(ids.filter(lambda i: i not in wanted_versions), st.integers(1, 50), max_size=4))
    held.update(extra)
    return held, [obj(i, v) for i, v in wanted_versions.items()]


@settings(max_examples=150, deadline=None)
@given(hub_consistent())
def test_property_resync_exact_when_hub_is_newest(hw):
    held, wanted = hw
    d = resync(held, wanted)
    assert apply(held, d) == {o.id: o.version for o in wanted}
    assert len(d.upserts) == sum(held.get(o.id) != o.version for o in wanted)
    assert not resync(apply(held, d), wanted)  # idempotent: a second resync sends nothing
