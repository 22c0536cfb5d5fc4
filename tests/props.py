"""How many examples the property tests run.

Each test keeps a default that fits the CI budget; ``FLEET_PROPERTY_EXAMPLES=N``
raises every one of them to N for a thorough run, e.g. thousands of random
fleets for the placement invariants::

    FLEET_PROPERTY_EXAMPLES=2000 pytest tests/unit/test_placement_solver.py
"""

from __future__ import annotations

import os


def examples(default: int) -> int:
    value = os.environ.get("FLEET_PROPERTY_EXAMPLES")
    return max(default, int(value)) if value else default
