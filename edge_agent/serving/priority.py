"""Priority classes at the door: names to engine priorities (pure).

The hub publishes ``PriorityClass`` objects (spec ``{"value": 100,
"preemptionPolicy": "PreemptLowerPriority", "sheddable": false}``). The
fleet's convention is the Gateway API Inference Extension's: an integer,
higher wins, negative means sheddable; the engine's scheduler uses the same
convention, so the value passes through unchanged whenever it agrees with
the class's ``sheddable`` flag. When the two disagree the flag wins, since the
engine sheds exactly the negative priorities: a sheddable class with a value
>= 0 runs at -1, a non-sheddable class with a negative value at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PriorityClass:
    name: str
    value: int
    sheddable: bool
    preemption_policy: str = "PreemptLowerPriority"

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> PriorityClass:
        """Parse a PriorityClass spec; raises ValueError naming the bad field."""
        value = spec.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"PriorityClass {name!r}: spec.value {value!r} must be a whole number")
        policy = spec.get("preemptionPolicy", "PreemptLowerPriority") or "PreemptLowerPriority"
        if policy not in ("PreemptLowerPriority", "Never"):
            raise ValueError(f"PriorityClass {name!r}: spec.preemptionPolicy {policy!r} is not one of "
                             "PreemptLowerPriority, Never")
        shed = spec.get("sheddable")
        return cls(name, int(value), int(value) < 0 if shed is None else bool(shed), policy)

    @property
    def engine_priority(self) -> int:
        """The engine's integer priority (higher wins, negative sheddable)."""
        if self.sheddable:
            return self.value if self.value < 0 else -1
        return self.value if self.value >= 0 else 0


class UnknownPriorityClass(LookupError):
    pass


def resolve(classes: Mapping[str, PriorityClass], requested: str | None, service_default: str | None,
            agent_default: str) -> PriorityClass | None:
    """The class of a request: named by it, else its service's, else the agent's default.

    Returns None when nothing names a class (the request runs at priority 0,
    class name ``""``). Raises :class:`UnknownPriorityClass` for a name this
    node does not hold.
    """
    name = requested or service_default or agent_default
    if not name:
        return None
    pc = classes.get(name)
    if pc is None:
        known = ", ".join(sorted(classes)) or "none"
        raise UnknownPriorityClass(f"unknown priority class {name!r}; this node holds: {known}")
    return pc
