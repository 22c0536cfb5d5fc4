"""The agent's one adapter to the Kubernetes API.

Every call the agent makes to the API server goes through `Kube`; nothing
else in `edge_agent` imports the `kubernetes` client. The adapter speaks
plain dicts (the API's JSON) to the control logic (`node_watch`, `managed`),
and turns every failure into a `KubeError` with a `condition` the control
logic can act on ("gone", "forbidden", "unreachable", ...), so it never sees
urllib3 or `ApiException`.

The client is synchronous; callers run it on their own threads. Each call
has a connect/read timeout, and urllib3 retries are off: backoff with jitter
is the callers' job, so an outage costs one attempt per backoff step, not a
burst of hidden retries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FIELD_MANAGER = "fleet-agent"
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "edge-fleet"

# condition -> a sentence for the one log line an outage gets
_CONDITIONS = {
    "unreachable": "the Kubernetes API server is unreachable",
    "timeout": "the Kubernetes API server is too slow (request timed out)",
    "server-error": "the Kubernetes API server answers with server errors",
    "throttled": "the Kubernetes API server throttles us (429)",
    "unauthorized": "the Kubernetes API server rejects our credentials (401)",
    "forbidden": "the Kubernetes API server refuses (403): the agent's RBAC lacks a permission",
    "gone": "the watch expired (410 Gone)",
    "not-found": "not found (404)",
    "conflict": "conflict (409)",
    "invalid": "rejected as invalid (422)",
}
TRANSIENT = frozenset({"unreachable", "timeout", "server-error", "throttled", "unauthorized"})
"""Conditions of the API server itself, not of one object: retry the whole pass later."""


class KubeError(Exception):
    """An API call failed. `condition` is one of the keys of `_CONDITIONS` or "http-<status>"."""

    def __init__(self, condition: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.condition = condition
        self.status = status

    @property
    def transient(self) -> bool:
        return self.condition in TRANSIENT

    @property
    def summary(self) -> str:
        return _CONDITIONS.get(self.condition, self.condition)


class KubeConfigError(Exception):
    """No usable credentials; the message says what to pass."""


def _translate(exc: BaseException, what: str) -> KubeError:
    from kubernetes.client.rest import ApiException
    from urllib3 import exceptions as u3

    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = exc.reason or ""
        with contextlib.suppress(Exception):
            detail = json.loads(exc.body).get("message") or detail
        condition = {
            401: "unauthorized", 403: "forbidden", 404: "not-found", 409: "conflict",
            410: "gone", 422: "invalid", 429: "throttled",
        }.get(status) or ("server-error" if status >= 500 else "unreachable" if status == 0 else f"http-{status}")
        return KubeError(condition, f"{what}: {status} {detail}".strip(), status)
    if isinstance(exc, u3.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, u3.NewConnectionError):  # a ConnectTimeoutError subclass in urllib3 2, but a refusal
        return KubeError("unreachable", f"{what}: {exc}")
    if isinstance(exc, (u3.TimeoutError, TimeoutError)):
        return KubeError("timeout", f"{what}: timed out ({exc})")
    if isinstance(exc, (u3.HTTPError, OSError)):
        reason = getattr(exc, "reason", None) or exc
        return KubeError("unreachable", f"{what}: {type(reason).__name__}: {reason}")
    return KubeError("unreachable", f"{what}: {type(exc).__name__}: {exc}")


class OutageLog:
    """One clear log line when a condition starts, one when it ends; per retry only at DEBUG."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.condition: str | None = None
        self.failures = 0
        self._seen: list[str] = []  # conditions already logged in this outage

    def failed(self, exc: KubeError, consequence: str) -> bool:
        """Record a failure; True (and one WARNING) the first time a condition shows in this outage
        (a restarting server flips between refused and slow: two lines at most, not one per flip)."""
        self.failures += 1
        self.condition = exc.condition
        if exc.condition in self._seen:
            self.logger.debug("%s: still failing (%d): %s", self.what, self.failures, exc)
            return False
        self._seen.append(exc.condition)
        self.logger.warning("%s: %s (%s); %s", self.what, exc.summary, exc, consequence)
        return True

    def ok(self) -> None:
        if self._seen:
            self.logger.warning(
                "%s: recovered after %d failed attempts (%s)", self.what, self.failures, ", ".join(self._seen)
            )
            self.condition = None
            self.failures = 0
            self._seen = []


class WatchStream:
    """One open watch: iterate (type, object) pairs; `close()` from any thread ends it."""

    def __init__(self, resp: Any, what: str) -> None:
        self._resp = resp
        self._what = what
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        buf = b""
        try:
            for chunk in self._resp.stream(amt=None, decode_content=False):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield self._event(line)
        except KubeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection broke (or we closed it)
            if self._closed:
                return
            raise _translate(exc, self._what) from exc
        finally:
            self.close()
        if buf.strip() and not self._closed:
            yield self._event(buf)

    def _event(self, line: bytes) -> tuple[str, dict]:
        try:
            ev = json.loads(line)
        except ValueError as exc:
            raise KubeError("server-error", f"{self._what}: undecodable watch event: {line[:200]!r}") from exc
        etype, obj = ev.get("type", ""), ev.get("object") or {}
        if etype == "ERROR":
            code = int(obj.get("code") or 0)
            condition = "gone" if code == 410 else "server-error" if code >= 500 or code == 0 else f"http-{code}"
            raise KubeError(condition, f"{self._what}: {code} {obj.get('message', '')}".strip(), code)
        return etype, obj

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._resp.shutdown()  # unblocks a read in another thread (urllib3 >= 2.3)
        with contextlib.suppress(Exception):
            self._resp.release_conn()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Kube:
    """All of the agent's Kubernetes API calls, on one `kubernetes.client.ApiClient`."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        field_manager: str = FIELD_MANAGER,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.field_manager = field_manager
        self.timeout = (connect_timeout_s, read_timeout_s)
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, namespace: str = "", **kw: Any) -> Kube:
        """Credentials from `kubeconfig`, else the pod's service account, else
        $KUBECONFIG / ~/.kube/config. Namespace: `namespace`, else $POD_NAMESPACE,
        else the pod's, else the kubeconfig context's, else "edge-fleet". No network call."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        cfg = client.Configuration()
        context_ns = ""
        try:
            if kubeconfig is not None:
                if not kubeconfig.exists():
                    raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
                config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
                context_ns = _context_namespace(kubeconfig)
            else:
                try:
                    config.load_incluster_config(client_configuration=cfg)
                    with contextlib.suppress(OSError):
                        context_ns = IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
                except ConfigException:
                    config.load_kube_config(client_configuration=cfg)
                    context_ns = _context_namespace(None)
        except (ConfigException, OSError, ValueError) as exc:
            raise KubeConfigError(
                f"no Kubernetes credentials ({exc}): run the agent in a pod with a service account, "
                "or pass --kubeconfig FILE"
            ) from None
        cfg.retries = 0  # our own backoff with jitter; no hidden retries
        ns = namespace or os.environ.get("POD_NAMESPACE", "") or context_ns or DEFAULT_NAMESPACE
        return cls(client.ApiClient(cfg), ns, **kw)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api_client.close()

    # -- plumbing -----------------------------------------------------------

    def _json(self, what: str, fn: Any, *args: Any, **kw: Any) -> dict:
        kw.setdefault("_request_timeout", self.timeout)
        try:
            resp = fn(*args, _preload_content=False, **kw)
            return json.loads(resp.data) if resp.data else {}
        except Exception as exc:  # noqa: BLE001 - translated for the control logic
            raise _translate(exc, what) from exc

    # -- nodes --------------------------------------------------------------

    def list_node(self, name: str) -> tuple[dict | None, str]:
        """The Node called `name` (None if absent) and the list's resourceVersion to watch from."""
        body = self._json(f"list Node {name}", self._core.list_node, field_selector=f"metadata.name={name}")
        items = body.get("items") or []
        return (items[0] if items else None), str(body.get("metadata", {}).get("resourceVersion", ""))

    def watch_node(self, name: str, resource_version: str, timeout_s: int) -> WatchStream:
        """Watch one Node from `resource_version`; the server ends the watch after `timeout_s`."""
        what = f"watch Node {name}"
        try:
            resp = self._core.list_node(
                field_selector=f"metadata.name={name}",
                watch=True,
                resource_version=resource_version or None,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_s,
                _preload_content=False,
                _request_timeout=(self.timeout[0], timeout_s + 30),
            )
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, what) from exc
        return WatchStream(resp, what)

    # -- pods and owners ----------------------------------------------------

    def get_pod(self, name: str) -> dict:
        return self._json(f"get Pod {self.namespace}/{name}", self._core.read_namespaced_pod, name, self.namespace)

    # -- workload objects (Deployment, Service) ------------------------------

    def _api(self, kind: str) -> tuple[Any, str]:
        if kind == "Deployment":
            return self._apps, "namespaced_deployment"
        if kind == "Service":
            return self._core, "namespaced_service"
        raise ValueError(f"kind {kind!r} is not managed by the agent")

    def list_objects(self, kind: str, labels: dict[str, str]) -> list[dict]:
        api, suffix = self._api(kind)
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        body = self._json(f"list {kind}s in {self.namespace}", getattr(api, f"list_{suffix}"), self.namespace, label_selector=selector)
        return list(body.get("items") or [])

    def apply(self, manifest: dict) -> dict:
        """Server-side apply as our field manager (force: we own these objects)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        api, suffix = self._api(kind)
        return self._json(
            f"apply {kind} {self.namespace}/{name}",
            getattr(api, f"patch_{suffix}"),
            name,
            self.namespace,
            manifest,
            field_manager=self.field_manager,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def delete(self, kind: str, name: str, uid: str | None = None) -> bool:
        """Delete (foreground for Deployments' pods is the GC's job); False when already gone.
        With `uid`, only that incarnation (a precondition), never a namesake created since."""
        from kubernetes import client

        api, suffix = self._api(kind)
        opts = client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            self._json(f"delete {kind} {self.namespace}/{name}", getattr(api, f"delete_{suffix}"), name, self.namespace, body=opts)
        except KubeError as exc:
            if exc.condition in ("not-found", "conflict"):  # gone, or replaced (uid precondition)
                return False
            raise
        return True

    # -- events -------------------------------------------------------------

    def post_event(self, involved: dict, reason: str, message: str, *, warning: bool = False, host: str = "") -> None:
        """A core/v1 Event about `involved` (apiVersion, kind, name[, uid]) in our namespace."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved['name']}.{secrets.token_hex(8)}", "namespace": self.namespace},
            "involvedObject": {**involved, "namespace": self.namespace},
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": self.field_manager, "host": host},
            "reportingComponent": self.field_manager,
            "reportingInstance": host or self.field_manager,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._json(f"post Event {reason} on {involved['kind']} {involved['name']}", self._core.create_namespaced_event, self.namespace, body)


def _context_namespace(kubeconfig: Path | None) -> str:
    from kubernetes import config

    with contextlib.suppress(Exception):
        _, active = config.list_kube_config_contexts(config_file=str(kubeconfig) if kubeconfig else None)
        return str((active or {}).get("context", {}).get("namespace") or "")
    return ""
