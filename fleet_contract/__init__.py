"""What the hub and the agent must agree on, as code both import (and which imports neither).

``hub`` and ``edge_agent`` never import each other; a decision that both take
(the hub when it plans, the agent when it admits a request) lives here once,
so the two cannot drift apart.

- ``residency``: may a data class be processed at a site?
- ``weights``: the digest of a model version's weight files (the spec's ``digest``, the agent's check).
"""
