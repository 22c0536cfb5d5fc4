"""Autoscaling: measured demand -> forecast -> target capacity -> a plan from the placement engine.

Pure code, no I/O (the hub loop and the benchmark feed it observations and a clock):

- ``forecast``  per (service, region) demand forecaster: daily (weekly when history allows)
                seasonality fitted with statsmodels' Holt-Winters, a short-term level updated on
                every observation, an upper quantile for SLO-critical classes; a seasonal-naive
                variant and a level-only fallback for short history
- ``decide``    forecasts -> per-workload target rates (hysteresis, scale-down delay, pre-warm at
                the lead time, min/max replicas) -> ``hub.placement.api.solve`` on the same
                Problem the hub builds, so residency stays the placement engine's job
- ``demand``    agents' demand reports -> a per (service, region) rate series
- ``status``    the rows of `fleet autoscale status`
"""
