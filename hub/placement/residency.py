"""Residency rules: may a data class be processed at a site?

Fail-closed: a site is allowed only when an ``allow`` entry matches it and
no ``deny`` entry does; a data class without a rule is allowed nowhere.
Every verdict carries its reason, which the explain and plan views show.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResidencyRule:
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

    def verdict(self, site: str, country: str, jurisdictions: tuple[str, ...]) -> tuple[bool, str]:
        """(allowed, reason) for a site in ``country`` within ``jurisdictions``."""
        who = f"ResidencyPolicy {self.policy!r}"
        if site in self.deny_sites:
            return False, f"{who} deny.sites lists {site}"
        if country in self.deny_countries:
            return False, f"{who} deny.countries lists {country}"
        denied = sorted(set(jurisdictions) & self.deny_jurisdictions)
        if denied:
            return False, f"{who} deny.jurisdictions lists {denied[0]} (site country {country})"
        if self.anywhere:
            return True, f"{who} allows anywhere"
        if site in self.allow_sites:
            return True, f"{who} allow.sites lists {site}"
        if country in self.allow_countries:
            return True, f"{who} allow.countries lists {country}"
        allowed = sorted(set(jurisdictions) & self.allow_jurisdictions)
        if allowed:
            return True, f"{who} allow.jurisdictions lists {allowed[0]}, which contains {country}"
        parts = []
        if self.allow_jurisdictions:
            parts.append(f"jurisdictions [{', '.join(sorted(self.allow_jurisdictions))}]")
        if self.allow_countries:
            parts.append(f"countries [{', '.join(sorted(self.allow_countries))}]")
        if self.allow_sites:
            parts.append(f"sites [{', '.join(sorted(self.allow_sites))}]")
        return False, (
            f"{who} allows only {' or '.join(parts) or 'nothing'}; site is in {country} "
            f"({', '.join(jurisdictions)})"
        )


def no_rule_reason(data_class: str) -> str:
    return f"no ResidencyPolicy for data class {data_class!r} (fail-closed: allowed nowhere)"
