"""Placement: pure functions that turn a validated bundle into replica
placements on (site, node, GPU pool), with explanations and plan diffs.

Entry points live in :mod:`hub.placement.api` (``plan``, ``solve``,
``explain``). Modules, one concern each:

- ``model``        typed inputs and outputs (Problem, Workload, Placement, ...)
- ``build``        Problem from a policy Bundle (availability at a given time)
- ``perf``         queueing performance model: replicas for p95 TTFT / TPOT
- ``residency``    residency rules and their reasons (fail-closed)
- ``constraints``  hard constraints, vectorised for solvers and one by one for explain
- ``packing``      GPU-level state: memory and compute shares per GPU
- ``state``        one solve's mutable state, undo journal, result building
- ``greedy``       fast solver (best fit with marginal cost, GPU closing, restarts)
- ``milp``         exact GPU-level MILP (HiGHS) for small instances
- ``consolidate``  free whole GPUs with the fewest moves
- ``explain``      per site: chosen or rejected, which constraint, which number
- ``diff``         plan diff: replicas added/removed/moved, cost, carbon, SLO attainment
- ``verify``       independent check of a placement against every hard constraint
- ``synthetic``    seeded synthetic fleets for tests and benchmarks
"""
