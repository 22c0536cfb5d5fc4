"""Pure decisions of the hub–agent link: what to send, and how a node stands.

No I/O here: the link service and the admin service call these with records
from the store, and the unit tests call them directly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from hub.store.repo import AppliedRecord, ObjectRecord


@dataclass(frozen=True, slots=True)
class Delta:
    """What one agent must apply: objects to upsert and ids to delete."""

    upserts: tuple[ObjectRecord, ...] = ()
    deletes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def resync(held: Mapping[str, int], wanted: Sequence[ObjectRecord]) -> Delta:
    """Compare what an agent holds ({id: version}) with what it should hold.

    Sends only objects that are newer than the agent's copy, and deletions for
    ids the agent holds that are no longer meant for it. No full re-list.
    """
    wanted_ids = {o.id for o in wanted}
    upserts = tuple(o for o in wanted if held.get(o.id, -1) < o.version)
    deletes = tuple(sorted(i for i in held if i not in wanted_ids))
    return Delta(upserts, deletes)


def delta_for(site: str, node: str, held: Mapping[str, int], changed: Iterable[ObjectRecord]) -> Delta:
    """Turn a stream of changed objects (tombstones included) into one agent's delta."""
    upserts: list[ObjectRecord] = []
    deletes: list[str] = []
    for obj in changed:
        meant = not obj.deleted and obj.targets(site, node)
        if meant:
            if held.get(obj.id, -1) < obj.version:
                upserts.append(obj)
        elif obj.id in held:
            deletes.append(obj.id)
    return Delta(tuple(upserts), tuple(deletes))


class Phase(enum.Enum):
    """A node's liveness, derived from the age of its last heartbeat."""

    CONNECTED = "Connected"
    STALE = "Stale"
    UNREACHABLE = "Unreachable"

    @classmethod
    def best(cls, phases: Iterable[Phase]) -> Phase:
        order = [cls.CONNECTED, cls.STALE, cls.UNREACHABLE]
        seen = set(phases)
        return next((p for p in order if p in seen), cls.UNREACHABLE)


@dataclass(frozen=True, slots=True)
class LivenessPolicy:
    """Heartbeat interval and the ages at which a node turns Stale and Unreachable."""

    heartbeat_interval: timedelta = timedelta(seconds=5)
    stale_after: timedelta = timedelta(seconds=15)        # 3 missed heartbeats
    unreachable_after: timedelta = timedelta(seconds=60)  # 12 missed heartbeats

    def __post_init__(self) -> None:
        if not (timedelta(0) < self.heartbeat_interval < self.stale_after < self.unreachable_after):
            raise ValueError(
                "liveness needs 0 < heartbeat_interval < stale_after < unreachable_after, got "
                f"{self.heartbeat_interval}, {self.stale_after}, {self.unreachable_after}"
            )


def phase(last_seen: datetime, now: datetime, connected: bool, policy: LivenessPolicy) -> Phase:
    """Connected while heartbeats are fresh; a closed stream alone does not make a node Unreachable."""
    age = now - last_seen
    if age <= policy.stale_after and connected:
        return Phase.CONNECTED
    if age <= policy.unreachable_after:
        return Phase.STALE
    return Phase.UNREACHABLE


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a node has applied the objects meant for it."""

    desired_version: int
    applied_version: int
    objects_desired: int
    objects_applied: int
    failed: tuple[str, ...] = ()

    @property
    def in_sync(self) -> bool:
        return self.objects_applied == self.objects_desired


def progress(wanted: Sequence[ObjectRecord], applied: Mapping[str, AppliedRecord]) -> Progress:
    """Desired version = newest object meant for the node; applied version = the
    highest version v such that every object with version <= v is applied."""
    ordered = sorted(wanted, key=lambda o: o.version)
    desired = ordered[-1].version if ordered else 0
    done = 0
    applied_version = 0
    prefix_intact = True
    failed: list[str] = []
    for obj in ordered:
        rec = applied.get(obj.id)
        ok = rec is not None and rec.ok and rec.version >= obj.version
        if rec is not None and not rec.ok and rec.version == obj.version:
            failed.append(f"{obj.kind}/{obj.name}: {rec.error}")
        if ok:
            done += 1
            if prefix_intact:
                applied_version = obj.version
        else:
            prefix_intact = False
    return Progress(desired, applied_version, len(ordered), done, tuple(failed))
