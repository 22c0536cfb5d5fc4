"""Residency at the door: may this node process a request of a data class?

The decision is :func:`fleet_contract.residency.decide`, the very function the
hub's planner calls, over the ``ResidencyPolicy`` objects the hub publishes
(spec ``{"dataClass", "description", "allow": {"anywhere", "jurisdictions",
"countries", "sites"}, "deny": {...}, "revision"}``) and this site's location.

Where this site is comes from the hub, never from the agent's own flags: the
hub publishes one ``SiteLocation`` object per site (spec ``{"site",
"country", "jurisdictions"}``) from its Site record. The agent's
``--country``/``--jurisdiction`` flags may only narrow: they are checked
against the hub's record, and when they contradict it the agent refuses every
restricted class (see :func:`locate`); they never let anything in.

Fail-closed: a request is allowed iff its data class has a policy, an allow
entry matches and no deny entry does. No data class, an unknown data class,
no policies at all, or, for a restricted class (one whose policy is not
simply ``anywhere``), no known location or a contradicted one: refused.
Every verdict carries a reason naming the policy and the rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet_contract.residency import Place, Rule, allows_text, decide


@dataclass(frozen=True)
class Location:
    """Where this node is: its site name, ISO country code and jurisdiction label(s).

    As flags (declared by the agent) ``jurisdiction`` is the one label given; as the
    hub's record ``jurisdictions`` lists every jurisdiction containing the country."""

    site: str
    country: str = ""
    jurisdiction: str = ""
    jurisdictions: tuple[str, ...] = ()

    @property
    def place(self) -> Place:
        js = self.jurisdictions or ((self.jurisdiction,) if self.jurisdiction else ())
        return Place(self.site, self.country, js)

    def describe(self) -> str:
        j = self.jurisdiction or (self.jurisdictions[0] if self.jurisdictions else "")
        return f"site {self.site} ({self.country or 'no country'}, jurisdiction {j or 'none'})"


@dataclass(frozen=True)
class SiteLocation:
    """The hub's record of a site's location, as its ``SiteLocation`` object carries it."""

    site: str
    country: str
    jurisdictions: tuple[str, ...]
    region: str = ""
    """The demand region the site sits in (its Site's ``region``); "" from a hub that did not say."""
    regions: tuple[str, ...] = ()
    """The demand regions this site serves (its own and those its Site lists networkLatency for): the
    values ``X-Fleet-Origin-Region`` may take here; empty from a hub that did not say."""

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> SiteLocation:
        """Parse a SiteLocation spec; raises ValueError naming the bad field."""
        site, country, js = spec.get("site"), spec.get("country"), spec.get("jurisdictions")
        region, regions = spec.get("region", ""), spec.get("regions", [])
        if not isinstance(region, str):
            raise ValueError(f"SiteLocation {name!r}: spec.region must be a region name")
        if not isinstance(regions, list) or not all(isinstance(r, str) and r for r in regions):
            raise ValueError(f"SiteLocation {name!r}: spec.regions must be a list of region names")
        if not isinstance(site, str) or not site:
            raise ValueError(f"SiteLocation {name!r}: spec.site is missing")
        if not isinstance(country, str) or len(country) != 2:
            raise ValueError(f"SiteLocation {name!r}: spec.country {country!r} must be an ISO 3166-1 alpha-2 code")
        if not isinstance(js, list) or not js or not all(isinstance(j, str) and j for j in js):
            raise ValueError(f"SiteLocation {name!r}: spec.jurisdictions must be a non-empty list of names")
        return cls(site, country, tuple(js), region, tuple(sorted({*regions, *([region] if region else [])})))


@dataclass(frozen=True)
class Located:
    """Where the door decides from: the hub's location of this site, or why there is none."""

    here: Location | None
    problem: str = ""
    """Why there is no location (not sent yet, or contradicted by the flags); empty when there is one."""
    conflict: bool = False


def locate(declared: Location, hub: SiteLocation | None) -> Located:
    """The location to decide with: the hub's record, checked against the flags (pure).

    Flags only narrow: a flag that contradicts the hub's record (another site, another
    country, a jurisdiction that does not contain the hub's country) leaves no location,
    so restricted classes are refused; flags that agree change nothing.
    """
    if hub is None:
        return Located(None, f"the hub has not sent the location of site {declared.site} yet (fail-closed)")
    clashes = []
    if hub.site != declared.site:
        clashes.append(f"site {declared.site!r} but the record is for site {hub.site!r}")
    if declared.country and declared.country != hub.country:
        clashes.append(f"--country {declared.country}")
    if declared.jurisdiction and declared.jurisdiction not in hub.jurisdictions:
        clashes.append(f"--jurisdiction {declared.jurisdiction}")
    if clashes:
        return Located(None, (f"this agent's flags say {', '.join(clashes)}, but the hub's Site record says site "
                              f"{hub.site} is in {hub.country} ({', '.join(hub.jurisdictions)}): restricted data "
                              f"classes are refused until the flags or the Site record are corrected"), True)
    jurisdiction = declared.jurisdiction or hub.jurisdictions[0]
    return Located(Location(hub.site, hub.country, jurisdiction, hub.jurisdictions))


@dataclass(frozen=True)
class ResidencyRule(Rule):
    """One ResidencyPolicy, reduced to sets."""

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
        return allows_text(self)


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


def evaluate(rules: Mapping[str, ResidencyRule], data_class: str, here: Location | Located) -> Verdict:
    """May a request of ``data_class`` be processed ``here``? Pure; fail-closed.

    ``here`` is a :class:`Located` (the door's: possibly no location, with why) or a known
    :class:`Location`."""
    located = here if isinstance(here, Located) else Located(here)
    loc = located.here
    where = loc.describe() if loc is not None else "this site (location not known)"
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
    if loc is None:
        if rule.restricted:
            clause = "location conflict" if located.conflict else "location unknown"
            return Verdict(False, data_class, rule.policy, clause,
                           f"data class {data_class!r} may not be processed here: {who} restricts it and "
                           f"{located.problem}")
        return Verdict(True, data_class, rule.policy, "allow.anywhere",
                       f"data class {data_class!r} may be processed at {where}: {who} allow.anywhere")
    d = decide(rule, loc.place)
    if d.clause.startswith("deny."):
        values = {"deny.sites": rule.deny_sites, "deny.countries": rule.deny_countries,
                  "deny.jurisdictions": rule.deny_jurisdictions}[d.clause]
        text = f"{d.clause} [{', '.join(sorted(values))}]"
        return Verdict(False, data_class, rule.policy, text,
                       f"data class {data_class!r} may not be processed at {where}: {who} {text} lists {d.value}")
    if d.allowed:
        text = "allow.anywhere" if d.clause == "allow.anywhere" else f"{d.clause} lists {d.value}"
        return Verdict(True, data_class, rule.policy, text,
                       f"data class {data_class!r} may be processed at {where}: {who} {text}")
    text = f"allows {rule.allows_text()}"
    return Verdict(False, data_class, rule.policy, text,
                   f"data class {data_class!r} may not be processed at {where}: {who} {text}")
