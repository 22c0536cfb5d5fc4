"""Appliers (:class:`edge_agent.link.Applier`) for the serving layer's desired objects.

* ``SiteLocation`` → where this site is, as the hub records it (the door decides with it);
* ``ResidencyPolicy`` → the gateway's residency rules (effective at once);
* ``PriorityClass`` → the gateway's class table;
* ``Placement`` → the model registry (load new models, drain and unload dropped ones).

A spec that cannot be applied raises: the hub link acks it as not-ok and the
previous version stays in force. :func:`restore` re-applies what local state
held before a restart (edge autonomy: the hub resends only what changed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from edge_agent.cancel import CancelToken
from edge_agent.serving.gateway import Gateway
from edge_agent.serving.models import ModelRegistry, PlacementSpec
from edge_agent.serving.priority import PriorityClass
from edge_agent.serving.residency import ResidencyRule, SiteLocation
from edge_agent.state import LocalObject

log = logging.getLogger(__name__)


class SiteLocationApplier:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def apply(self, obj: LocalObject, previous: LocalObject | None) -> None:
        loc = SiteLocation.from_spec(obj.name, obj.spec)
        if loc.site != self.gateway.declared.site:
            raise ValueError(f"SiteLocation {obj.name!r} is for site {loc.site!r}, this agent is at site "
                             f"{self.gateway.declared.site!r}")
        self.gateway.set_site_location(obj.id, loc)

    def remove(self, obj: LocalObject) -> None:
        self.gateway.set_site_location(obj.id, None)


class ResidencyApplier:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def apply(self, obj: LocalObject, previous: LocalObject | None) -> None:
        rule = ResidencyRule.from_spec(obj.name, obj.spec)
        self.gateway.set_policy(obj.id, rule)
        log.info("residency policy %s (data class %s) in force", obj.name, rule.data_class)

    def remove(self, obj: LocalObject) -> None:
        self.gateway.set_policy(obj.id, None)


class PriorityClassApplier:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def apply(self, obj: LocalObject, previous: LocalObject | None) -> None:
        self.gateway.set_priority_class(obj.id, PriorityClass.from_spec(obj.name, obj.spec))

    def remove(self, obj: LocalObject) -> None:
        self.gateway.set_priority_class(obj.id, None)


class PlacementApplier:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    cancellable = True
    """The hub link passes a cancel token: a load it abandons (timeout, newer version, delete) is thrown away."""

    def apply(self, obj: LocalObject, previous: LocalObject | None, cancel: CancelToken | None = None) -> None:
        spec = PlacementSpec.from_spec(obj.name, obj.spec, self.registry.node, self.registry.country)
        self.registry.apply(obj.id, spec, cancel)

    def remove(self, obj: LocalObject) -> None:
        self.registry.remove(obj.id)


def appliers(gateway: Gateway, placements: bool = True) -> dict[str, object]:
    out: dict[str, object] = {"SiteLocation": SiteLocationApplier(gateway),
                              "ResidencyPolicy": ResidencyApplier(gateway),
                              "PriorityClass": PriorityClassApplier(gateway)}
    if placements:
        out["Placement"] = PlacementApplier(gateway.registry)
    return out


def restore(table: dict[str, object], held: Iterable[LocalObject]) -> list[str]:
    """Re-apply objects held in local state (policies first, then placements); log, never raise.

    Returns one line per object that could not be restored (e.g. weights that no longer match
    their digest), for the heartbeat's recent errors."""
    order = {"SiteLocation": 0, "ResidencyPolicy": 1, "PriorityClass": 2, "Placement": 3}
    failed = []
    for obj in sorted((o for o in held if o.kind in table), key=lambda o: order.get(o.kind, 4)):
        try:
            table[obj.kind].apply(obj, None)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - keep serving what can be served
            log.error("could not restore %s/%s v%d after restart: %s", obj.kind, obj.name, obj.version, exc)
            failed.append(f"could not restore {obj.kind}/{obj.name} v{obj.version} after restart: {exc}")
    return failed
