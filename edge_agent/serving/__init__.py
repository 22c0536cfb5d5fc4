"""The agent's serving layer: OpenAI-compatible HTTP and gRPC in front of the local
engine (or an external OpenAI-compatible server), with residency checked at the
door, priority classes, per-request telemetry, cost and carbon.

Modules, one concern each:

* ``residency``, ``priority``, ``cost`` — pure decisions and formulas;
* ``models`` — backends (local engine, external server) and the model registry;
* ``gateway`` — the protocol-independent front door (admit, start, record);
* ``openai_api`` (HTTP), ``grpc_api`` (gRPC) — wire formats only;
* ``telemetry`` (hub report), ``metrics`` (Prometheus) — exporters of the same records;
* ``appliers`` — ResidencyPolicy, PriorityClass and Placement from the hub;
* ``server`` — the servers' thread and lifecycle.
"""
