"""Rollouts of a service to a new model version across the fleet: the pure core.

- ``spec``     :class:`RolloutSpec`, parsed from the CLI's strings (waves, durations, sizes, cron)
- ``plan``     deterministic waves over the service's sites (opted-out sites excluded and listed)
- ``gates``    SLO gate and canary comparisons on merged sketches, each a verdict in a sentence
- ``machine``  the durable state machine: explicit phases, pure ``step`` and ``command``,
               plain-dict state for the store

No store, no gRPC, no clock: the controller observes, steps, carries out the
actions and persists the state.
"""
