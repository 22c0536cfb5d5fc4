"""Residency rules: may a data class be processed at a site?

The decision itself is :func:`fleet_contract.residency.decide`, the same
function the agent's door calls, so the planner never places a data class
where the agent would refuse it (nor the other way round). This module words
the hub's reasons, which the explain and plan views show.

Fail-closed: a site is allowed only when an ``allow`` entry matches it and
no ``deny`` entry does; a data class without a rule is allowed nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet_contract.residency import Place, Rule, allows_text, decide


@dataclass(frozen=True)
class ResidencyRule(Rule):
    """One ResidencyPolicy reduced to sets (jurisdictions, ISO countries, site names)."""

    def verdict(self, site: str, country: str, jurisdictions: tuple[str, ...]) -> tuple[bool, str]:
        """(allowed, reason) for a site in ``country`` within ``jurisdictions``."""
        d = decide(self, Place(site, country, tuple(jurisdictions)))
        who = f"ResidencyPolicy {self.policy!r}"
        if d.clause == "deny.jurisdictions":
            return False, f"{who} deny.jurisdictions lists {d.value} (site country {country})"
        if d.clause == "allow.anywhere":
            return True, f"{who} allows anywhere"
        if d.clause == "allow.jurisdictions":
            return True, f"{who} allow.jurisdictions lists {d.value}, which contains {country}"
        if d.clause == "allow":
            return False, f"{who} allows only {allows_text(self)}; site is in {country} ({', '.join(jurisdictions)})"
        return d.allowed, f"{who} {d.clause} lists {d.value}"


def no_rule_reason(data_class: str) -> str:
    return f"no ResidencyPolicy for data class {data_class!r} (fail-closed: allowed nowhere)"
