"""Small fleets as YAML text, for tests that need a bundle smaller than the shipped one."""

from __future__ import annotations

ONE_NODE = """\
apiVersion: fleet.edge/v1alpha1
kind: Site
metadata: {name: fra-1}
spec:
  region: eu-central
  country: "DE"
  gridIntensity: 344gCO2e/kWh
  networkLatency: {eu-central: 5ms}
  gpuPools:
  - {name: l4, node: gpu-a, gpuType: L4, count: 8, memory: 24GiB, price: $0.85/h, power: 72W}
---
apiVersion: fleet.edge/v1alpha1
kind: Model
metadata: {name: assistant}
spec:
  versions:
  - name: v3
    integrity: none
    weightSize: 16GiB
    gpuMemoryPerReplica: 20GiB
    profiles:
    - {gpuType: L4, prefillThroughput: 3000tok/s, decodeThroughput: 480tok/s, maxBatch: 16, tpotAtBatch1: 27ms}
---
apiVersion: fleet.edge/v1alpha1
kind: ResidencyPolicy
metadata: {name: eu}
spec:
  dataClass: personal-eu
  allow: {jurisdictions: [EU]}
---
apiVersion: fleet.edge/v1alpha1
kind: PriorityClass
metadata: {name: interactive}
spec: {value: 1000}
---
apiVersion: fleet.edge/v1alpha1
kind: Service
metadata: {name: chat}
spec:
  model: assistant
  version: v3
  slo: {ttftP95: 2s, tpotP95: 100ms}
  demand:
  - {region: eu-central, rate: 12rps, meanPromptTokens: 200, meanOutputTokens: 200}
  priorityClass: interactive
  dataClass: personal-eu
"""
"""One site (fra-1) whose node gpu-a declares 8 L4s, one Model version (assistant v3, `integrity: none`),
and one Service (chat) whose demand wants more than 2 of those GPUs."""
