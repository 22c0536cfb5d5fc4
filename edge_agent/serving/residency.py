"""Residency at the door: may this node process a request of a data class?

A pure decision over the ``ResidencyPolicy`` objects the hub publishes (spec
``{"dataClass", "description", "allow": {"anywhere", "jurisdictions",
"countries", "sites"}, "deny": {...}, "revision"}``). The hub has already
expanded jurisdiction containment (a policy allowing EEA lists EU too), so
the tests here are plain membership tests against this node's own site,
country and jurisdiction.

Fail-closed: a request is allowed iff its data class has a policy, an allow
entry matches (``anywhere``, the site, the country or the jurisdiction) and
no deny entry does. No data class, an unknown data class, or no policies at
all: refused. Every verdict carries a reason naming the policy and the rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Location:
    """Where this node is: its site name, ISO country code and jurisdiction label."""

    site: str
    country: str = ""
    jurisdiction: str = ""

    def describe(self) -> str:
        return f"site {self.site} ({self.country or 'no country'}, jurisdiction {self.jurisdiction or 'none'})"


@dataclass(frozen=True)
class ResidencyRule:
    """One ResidencyPolicy, reduced to sets."""

    policy: str
    data_class: str
    anywhere: bool = False
    allow_jurisdictions: frozenset[str] = frozenset()
    allow_countries: frozenset[str] = frozenset()
    allow_sites: frozenset[str] = frozenset()
    deny_jurisdictions: frozenset[str] = frozenset()
    deny_countries: frozenset[str] = frozenset()
    deny_sites: frozenset[str] = frozenset()
    revision: int = 0

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> ResidencyRule:
        """Parse a ResidencyPolicy spec; raises ValueError naming the bad field."""
        data_class = spec.get("dataClass")
        if not isinstance(data_class, str) or not data_class:
            raise ValueError(f"ResidencyPolicy {name!r}: spec.dataClass is missing")

        def names(section: str, key: str) -> frozenset[str]:
            part = spec.get(section) or {}
            if not isinstance(part, Mapping):
                raise ValueError(f"ResidencyPolicy {name!r}: spec.{section} must be a mapping")
            value = part.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"ResidencyPolicy {name!r}: spec.{section}.{key} must be a list of names")
            return frozenset(value)

        allow = spec.get("allow") or {}
        rev = spec.get("revision", 0)
        return cls(
            policy=name, data_class=data_class,
            anywhere=bool(isinstance(allow, Mapping) and allow.get("anywhere", False)),
            allow_jurisdictions=names("allow", "jurisdictions"), allow_countries=names("allow", "countries"),
            allow_sites=names("allow", "sites"),
            deny_jurisdictions=names("deny", "jurisdictions"), deny_countries=names("deny", "countries"),
            deny_sites=names("deny", "sites"),
            revision=int(rev) if isinstance(rev, (int, float)) else 0,
        )

    def allows_text(self) -> str:
        parts = []
        if self.anywhere:
            parts.append("anywhere")
        for label, values in (("jurisdictions", self.allow_jurisdictions), ("countries", self.allow_countries),
                              ("sites", self.allow_sites)):
            if values:
                parts.append(f"{label} [{', '.join(sorted(values))}]")
        return " or ".join(parts) or "nothing"


@dataclass(frozen=True)
class Verdict:
    """The decision and why, as the audit record and the 403 message carry it."""

    allowed: bool
    data_class: str
    policy: str
    """Name of the deciding ResidencyPolicy; empty when none applies."""
    rule: str
    """The clause that decided, e.g. ``allow.countries [DE]`` or ``deny.sites [fra-1]``."""
    message: str
    """One sentence for the caller and the log."""


def rules_by_class(rules: Iterable[ResidencyRule]) -> dict[str, ResidencyRule]:
    """Index rules by data class (one policy per class; the hub validates that)."""
    return {r.data_class: r for r in rules}


def evaluate(rules: Mapping[str, ResidencyRule], data_class: str, here: Location) -> Verdict:
    """May a request of ``data_class`` be processed ``here``? Pure; fail-closed."""
    where = here.describe()
    if not data_class:
        return Verdict(False, "", "", "no data class",
                       f"request names no data class (header X-Fleet-Data-Class) and this agent has no default: "
                       f"refused at {where} (fail-closed)")
    rule = rules.get(data_class)
    if rule is None:
        return Verdict(False, data_class, "", "no policy",
                       f"data class {data_class!r} may not be processed at {where}: no ResidencyPolicy for it "
                       f"on this node (fail-closed)")
    who = f"ResidencyPolicy {rule.policy!r}"
    denied = [("sites", here.site, rule.deny_sites), ("countries", here.country, rule.deny_countries),
              ("jurisdictions", here.jurisdiction, rule.deny_jurisdictions)]
    for label, value, values in denied:
        if value and value in values:
            text = f"deny.{label} [{', '.join(sorted(values))}]"
            return Verdict(False, data_class, rule.policy, text,
                           f"data class {data_class!r} may not be processed at {where}: {who} {text} lists {value}")
    allowed = [("anywhere", "", rule.anywhere), ("sites", here.site, here.site in rule.allow_sites),
               ("countries", here.country, here.country in rule.allow_countries),
               ("jurisdictions", here.jurisdiction, here.jurisdiction in rule.allow_jurisdictions)]
    for label, value, ok in allowed:
        if ok and (label == "anywhere" or value):
            text = "allow.anywhere" if label == "anywhere" else f"allow.{label} lists {value}"
            return Verdict(True, data_class, rule.policy, text,
                           f"data class {data_class!r} may be processed at {where}: {who} {text}")
    text = f"allows {rule.allows_text()}"
    return Verdict(False, data_class, rule.policy, text,
                   f"data class {data_class!r} may not be processed at {where}: {who} {text}")
