"""Closed vocabularies: jurisdictions, countries, GPU types, data classes.

Countries are ISO 3166-1 alpha-2 codes. Each belongs to one or more
jurisdictions; a site's declared jurisdiction must be one of its country's.
EU member states are also in the EEA (EU + Iceland, Liechtenstein, Norway),
so a policy that allows ``EEA`` allows every EU country too.
"""

from __future__ import annotations

import difflib
from typing import Iterable

EU_COUNTRIES = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()
)
EEA_ONLY_COUNTRIES = frozenset({"IS", "LI", "NO"})

#: country code -> the jurisdictions it belongs to (most specific first).
COUNTRY_JURISDICTIONS: dict[str, tuple[str, ...]] = {
    **{c: ("EU", "EEA") for c in EU_COUNTRIES},
    **{c: ("EEA",) for c in EEA_ONLY_COUNTRIES},
    "CH": ("CH",),
    "GB": ("UK",),
    "US": ("US",),
    "CA": ("CA",),
    "JP": ("JP",),
    "KR": ("KR",),
    "SG": ("SG",),
    "IN": ("IN",),
    "AU": ("AU",),
    "BR": ("BR",),
}

KNOWN_COUNTRIES = frozenset(COUNTRY_JURISDICTIONS)
KNOWN_JURISDICTIONS = frozenset(j for js in COUNTRY_JURISDICTIONS.values() for j in js)

#: GPU types the fleet knows. Names are upper-case; memory/power live on pools.
KNOWN_GPU_TYPES = frozenset(
    {
        "H100-SXM", "H100-PCIE", "H200", "A100-80GB", "A100-40GB", "L40S", "L4", "T4",
        "A10", "JETSON-AGX-ORIN", "JETSON-ORIN-NANO",
    }
)


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` or ``""``.

    Names that start with or contain what was typed come first (case-insensitive):
    ``H100`` is a family, so its variants ``H100-PCIE``/``H100-SXM`` are meant, not
    ``H200``, which is merely one edit away (issue 12). Otherwise the exact match
    ignoring case, then difflib's closest match.
    """
    if not isinstance(value, str) or not value.strip():
        return ""
    options = sorted(choices)
    typed = value.strip().upper()
    upper = {o.upper(): o for o in options}
    if typed in upper and upper[typed] != value:
        return f" (did you mean '{upper[typed]}'?)"
    family = [o for o in options if o.upper().startswith(typed)] or [o for o in options if typed in o.upper()]
    if family and len(typed) >= 2:
        family = family[:4]
        if len(family) == 1:
            return f" (did you mean '{family[0]}'?)"
        return f" (did you mean one of {', '.join(repr(o) for o in family)}?)"
    match = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown(value: object, what: str, choices: Iterable[str]) -> str:
    """Message for a value outside a closed vocabulary."""
    choices = list(choices)
    hint = did_you_mean(value, choices)
    if not hint and len(choices) <= 16:
        hint = f" (one of {', '.join(sorted(choices))})"
    return f"{value!r} is not a known {what}{hint}"
