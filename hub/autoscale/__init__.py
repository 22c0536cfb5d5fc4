"""Autoscaling: measured demand -> forecast -> target capacity -> a plan from the placement engine."""
