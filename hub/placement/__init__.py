"""Placement: pure functions that turn a validated bundle into replica
placements on (site, node, GPU pool), with explanations and plan diffs.

Entry points live in :mod:`hub.placement.api`.
"""
