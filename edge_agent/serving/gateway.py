"""The front door both protocols share: resolve the model, check residency and the
priority class, start the generation, and record every outcome.

HTTP (:mod:`~edge_agent.serving.openai_api`) and gRPC
(:mod:`~edge_agent.serving.grpc_api`) only translate their wire formats to
these calls and :class:`~edge_agent.serving.errors.ServingError` back.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from edge_agent.serving import residency
from edge_agent.serving.cost import NvmlEnergy, request_cost
from edge_agent.serving.demand import origin_region
from edge_agent.serving.errors import BadRequest, Forbidden, Overloaded, ServingError, Unavailable
from edge_agent.serving.models import Assignment, Backend, Generation, GenRequest, ModelRegistry
from edge_agent.serving.priority import PriorityClass, UnknownPriorityClass, resolve
from edge_agent.serving.residency import Located, Location, ResidencyRule, SiteLocation, Verdict
from edge_agent.serving.telemetry import Outcome, RequestRecord, Telemetry

log = logging.getLogger(__name__)
audit_log = logging.getLogger("edge_agent.serving.audit")

Report = Callable[[str, dict], object]


@dataclass(frozen=True)
class Admission:
    """A request let in: where it runs and at which class."""

    request_id: str
    backend: Backend
    assignment: Assignment | None
    priority_class: PriorityClass | None
    verdict: Verdict
    origin: str = ""
    """The demand region the request counts for (edge_agent.serving.demand)."""

    @property
    def priority_name(self) -> str:
        return self.priority_class.name if self.priority_class else ""

    @property
    def service(self) -> str:
        return self.assignment.service if self.assignment else self.backend.model


class Gateway:
    def __init__(self, here: Location, registry: ModelRegistry, telemetry: Telemetry, report: Report, *,
                 default_data_class: str = "", default_priority_class: str = "", audit_allowed: bool = False,
                 energy: NvmlEnergy | None = None, on_error: Callable[[str], None] | None = None) -> None:
        self.declared = here
        """Where the agent's flags say this node is; only checked against the hub's record (never trusted)."""
        self.on_error = on_error
        """Told (e.g. the hub link's recent errors) when the flags contradict the hub's Site record."""
        self._site_location: SiteLocation | None = None
        self.located: Located = residency.locate(here, None)
        """Where the door decides from (the hub's SiteLocation checked against the flags)."""
        self.registry = registry
        self.telemetry = telemetry
        self.report = report
        self.default_data_class = default_data_class
        self.default_priority_class = default_priority_class
        self.audit_allowed = audit_allowed
        self.energy = energy
        self._policies: dict[str, ResidencyRule] = {}
        """ResidencyPolicy object id -> rule."""
        self._rules: dict[str, ResidencyRule] = {}
        """Data class -> rule (derived from _policies)."""
        self._classes: dict[str, PriorityClass] = {}
        """PriorityClass object id -> class."""
        self._by_name: dict[str, PriorityClass] = {}
        self._ids = itertools.count()
        self._prefix = f"{here.site}-{os.getpid()}-{int(time.time())}"

    @property
    def here(self) -> Location:
        """This node's location as the door uses it (the declared one while the hub's is not known)."""
        return self.located.here or self.declared

    def set_site_location(self, object_id: str, loc: SiteLocation | None) -> None:
        """The hub's record of this site's location (None: withdrawn). A contradiction with the flags is
        logged, reported as an event and surfaced in recent errors; restricted classes are then refused."""
        located = residency.locate(self.declared, loc)
        self._site_location, self.located = loc, located
        if located.conflict:
            log.error("location conflict: %s", located.problem)
            self._report_event({"reason": "LocationConflict", "kind": "SiteLocation", "name": object_id,
                                "message": located.problem})
            if self.on_error is not None:
                try:
                    self.on_error(f"location conflict: {located.problem}")
                except Exception:  # noqa: BLE001 - the refusal stands whatever the error sink does
                    log.exception("could not record the location conflict")
        elif located.here is not None:
            log.info("site location from the hub: %s", located.here.describe())
        else:
            log.warning("site location withdrawn: %s", located.problem)

    def _report_event(self, payload: dict) -> None:
        try:
            self.report("event", payload)
        except Exception:  # noqa: BLE001
            log.exception("could not queue the %s event", payload.get("reason"))

    # -- policy objects (appliers call these; readers see whole snapshots) --------------
    def set_policy(self, object_id: str, rule: ResidencyRule | None) -> None:
        policies = {k: v for k, v in self._policies.items() if k != object_id}
        if rule is not None:
            policies[object_id] = rule
        self._policies, self._rules = policies, residency.rules_by_class(policies.values())

    def set_priority_class(self, object_id: str, pc: PriorityClass | None) -> None:
        classes = {k: v for k, v in self._classes.items() if k != object_id}
        if pc is not None:
            classes[object_id] = pc
        self._classes, self._by_name = classes, {c.name: c for c in classes.values()}

    @property
    def priority_classes(self) -> dict[str, PriorityClass]:
        return self._by_name

    def ready(self) -> str | None:
        """None when at least one model is loaded, else why not."""
        return None if self.registry.backends() else "no model loaded yet (waiting for a Placement)"

    # -- the door ----------------------------------------------------------------------------
    def new_request_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def admit(self, model: str, data_class: str | None, priority_class: str | None,
              request_id: str | None = None, origin: str | None = None) -> Admission:
        """Check and resolve a request; raises Forbidden, ModelNotFound or BadRequest (recorded, audited).

        ``origin``: the X-Fleet-Origin-Region header (checked against the regions this site serves;
        none: the site's own region), the region the request's demand counts for.

        Residency comes first: data that may not be processed here is refused whatever else is
        wrong with the request, also while the model it names is still loading (fail-closed, and a
        refused caller learns nothing about what this node serves)."""
        rid = request_id or self.new_request_id()
        dc = data_class if data_class else self.default_data_class
        verdict = residency.evaluate(self._rules, dc, self.located)
        if not verdict.allowed:
            self._refuse(verdict, rid, model, priority_class, origin)
        backend, assignment = self.registry.resolve(model)
        if assignment is not None and assignment.data_class and assignment.data_class not in self._rules:
            # Not open to traffic until the policy of the data class it serves is held here.
            raise Unavailable(f"service {assignment.service!r} is not open yet: this node does not hold the "
                              f"ResidencyPolicy of its data class {assignment.data_class!r}")
        group = (backend.model, backend.version)
        service = assignment.service if assignment else backend.model
        try:
            region = origin_region(origin, self._site_location)
        except BadRequest:
            self.telemetry.record(RequestRecord(*group, priority_class or "", Outcome.ERROR, service=service,
                                                origin=self._own_region()))
            raise
        try:
            pc = resolve(self._by_name, priority_class, assignment.priority_class if assignment else None,
                         self.default_priority_class)
        except UnknownPriorityClass as exc:
            self.telemetry.record(RequestRecord(*group, priority_class or "", Outcome.ERROR, service=service,
                                                origin=region))
            raise BadRequest(str(exc), param="priority", code="unknown_priority_class") from None
        if self.audit_allowed:
            self._audit(verdict, rid, f"{backend.model}:{backend.version}")
        return Admission(rid, backend, assignment, pc, verdict, region)

    def _own_region(self) -> str:
        return self._site_location.region if self._site_location is not None else ""

    def _refuse(self, verdict: Verdict, request_id: str, model: str, priority_class: str | None,
                origin: str | None = None) -> None:
        """Audit a refused request, count it under its model when that is loaded here, raise Forbidden."""
        try:
            backend, assignment = self.registry.resolve(model)
        except ServingError:  # not loaded (yet), or no model named: the audit record still says what was asked
            self._audit(verdict, request_id, model)
            raise Forbidden(verdict.message) from None
        self._audit(verdict, request_id, f"{backend.model}:{backend.version}")
        try:
            pc = resolve(self._by_name, priority_class, assignment.priority_class if assignment else None,
                         self.default_priority_class)
            pc_name = pc.name if pc else ""
        except UnknownPriorityClass:
            pc_name = priority_class or ""
        try:  # refused demand still counts for where it came from (the site's own region if that is unclear)
            region = origin_region(origin, self._site_location)
        except BadRequest:
            region = self._own_region()
        self.telemetry.record(RequestRecord(backend.model, backend.version, pc_name, Outcome.FORBIDDEN,
                                            service=assignment.service if assignment else backend.model,
                                            origin=region))
        raise Forbidden(verdict.message)

    def _audit(self, v: Verdict, request_id: str, model: str) -> None:
        decision = "allow" if v.allowed else "deny"
        audit_log.warning("residency %s: request %s model %s data class %r: %s", decision, request_id, model,
                          v.data_class, v.message)
        record = {
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "dataClass": v.data_class,
            "site": self.here.site, "country": self.here.country, "jurisdiction": self.here.jurisdiction,
            "decision": decision, "policy": v.policy, "rule": v.rule, "reason": v.message,
            "requestId": request_id, "model": model,
        }
        try:
            self.report("audit", record)
        except Exception:  # noqa: BLE001 - the refusal stands even if the outbox is unavailable
            log.exception("could not queue the audit record of request %s", request_id)

    async def start(self, adm: Admission, req: GenRequest) -> Generation:
        """Submit with the admission's class and SLOs; returns once the first token (or the end) is there.

        Refusals after admission (bad input, shed) are recorded and raised.
        """
        a = adm.assignment
        req = replace(req, request_id=adm.request_id,
                      priority=adm.priority_class.engine_priority if adm.priority_class else 0,
                      ttft_slo_s=a.ttft_slo_s if a else None, tpot_slo_s=a.tpot_slo_s if a else None)
        gen: Generation | None = None
        try:
            gen = await adm.backend.start(req)
            await gen.first()
        except ServingError as exc:
            outcome = Outcome.REJECTED if isinstance(exc, Overloaded) else Outcome.ERROR
            self.finish(adm, gen, outcome)
            raise
        except BaseException:
            if gen is not None:
                await gen.aclose()
            self.finish(adm, gen, Outcome.CANCELLED)
            raise
        return gen

    def finish(self, adm: Admission, gen: Generation | None, outcome: Outcome | None = None) -> None:
        """Record a finished request; the outcome defaults to what the generation says."""
        if outcome is None:
            reason = gen.finish_reason if gen is not None else "error"
            outcome = {"stop": Outcome.OK, "length": Outcome.OK, "abort": Outcome.CANCELLED,
                       "rejected": Outcome.REJECTED}.get(reason, Outcome.ERROR)
        b = adm.backend
        stats = gen.stats if gen is not None else None
        cost = None
        if stats is not None:
            energy = self.energy.energy_j(stats.gpu_seconds) if self.energy is not None else None
            cost = request_cost(self.registry.cost_model((b.model, b.version)), stats.gpu_seconds, energy)
        self.telemetry.record(RequestRecord(b.model, b.version, adm.priority_name, outcome, stats, cost,
                                            service=adm.service, origin=adm.origin))
