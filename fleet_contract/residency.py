"""The one residency decision: may data of a class be processed at a place?

Both the hub's planner (``hub.placement.residency``) and the agent's door
(``edge_agent.serving.residency``) call :func:`decide`, so a site the hub
places a data class on is exactly a site whose agent admits it, and the
other way round. Each side words its own reasons around the returned
:class:`Decision`.

Fail-closed: a place is allowed only when an ``allow`` entry matches it and no
``deny`` entry does; deny entries are checked first (sites, countries,
jurisdictions), then allow entries (anywhere, sites, countries,
jurisdictions). Empty names (no site, no country) match nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One ResidencyPolicy reduced to sets (jurisdictions, ISO countries, site names)."""

    policy: str
    data_class: str
    anywhere: bool = False
    allow_jurisdictions: frozenset[str] = frozenset()
    allow_countries: frozenset[str] = frozenset()
    allow_sites: frozenset[str] = frozenset()
    deny_jurisdictions: frozenset[str] = frozenset()
    deny_countries: frozenset[str] = frozenset()
    deny_sites: frozenset[str] = frozenset()

    @property
    def restricted(self) -> bool:
        """True unless the class may go anywhere with no deny entry (then a site's location does not matter)."""
        return not self.anywhere or bool(self.deny_sites or self.deny_countries or self.deny_jurisdictions)


@dataclass(frozen=True)
class Place:
    """Where a site is: its name, ISO 3166-1 country and every jurisdiction that contains the country."""

    site: str
    country: str = ""
    jurisdictions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The verdict and the clause that decided it."""

    allowed: bool
    clause: str
    """``deny.sites``, ``deny.countries``, ``deny.jurisdictions``, ``allow.anywhere``, ``allow.sites``,
    ``allow.countries``, ``allow.jurisdictions``, or ``allow`` (no allow entry matched)."""
    value: str = ""
    """The site, country or jurisdiction the clause matched (empty for ``allow.anywhere`` and ``allow``)."""


def decide(rule: Rule, place: Place) -> Decision:
    """May data governed by ``rule`` be processed at ``place``? Pure; fail-closed."""
    if place.site and place.site in rule.deny_sites:
        return Decision(False, "deny.sites", place.site)
    if place.country and place.country in rule.deny_countries:
        return Decision(False, "deny.countries", place.country)
    denied = sorted(set(place.jurisdictions) & rule.deny_jurisdictions)
    if denied:
        return Decision(False, "deny.jurisdictions", denied[0])
    if rule.anywhere:
        return Decision(True, "allow.anywhere")
    if place.site and place.site in rule.allow_sites:
        return Decision(True, "allow.sites", place.site)
    if place.country and place.country in rule.allow_countries:
        return Decision(True, "allow.countries", place.country)
    allowed = sorted(set(place.jurisdictions) & rule.allow_jurisdictions)
    if allowed:
        return Decision(True, "allow.jurisdictions", allowed[0])
    return Decision(False, "allow")


def allows_text(rule: Rule) -> str:
    """What a rule allows, for messages: ``jurisdictions [EEA, EU] or countries [CH]``."""
    parts = ["anywhere"] if rule.anywhere else []
    for label, values in (("jurisdictions", rule.allow_jurisdictions), ("countries", rule.allow_countries),
                          ("sites", rule.allow_sites)):
        if values:
            parts.append(f"{label} [{', '.join(sorted(values))}]")
    return " or ".join(parts) or "nothing"
