"""What a kubelet and kube-proxy would do for the agent's model servers, for a
test without either: `Kubelet` runs one vLLM-compatible `SimServer` per
managed Deployment on this machine, replaces it when the Deployment's pod
template changes, stops it when the Deployment goes, and keeps a kube-proxy
table from each Service's clusterIP:port to where its "pod" listens, which
the agent dials through `ManagedServers.dial`.

`SimServer` speaks the part of vLLM's OpenAI server the agent's door uses:
``/health``, ``/v1/models``, and streamed ``/v1/completions`` and
``/v1/chat/completions`` (server-sent events, a final ``usage`` chunk,
``[DONE]``). Each token is the pod's model version, so a test sees which
version answered. A `gate` holds every stream after its first token until
the test opens it, so a test can keep requests in flight across a rollout.
Stopping is graceful, like uvicorn on SIGTERM: no new connections, and the
streams in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from kubernetes.client.rest import ApiException

REFUSED = "http://127.0.0.1:1"
"""Where a Service without a ready endpoint leads (connection refused, as kube-proxy answers)."""


class SimServer:
    """One model server "pod": `model` at `version` on 127.0.0.1:<port>."""

    def __init__(self, model: str, version: str) -> None:
        self.model, self.version = model, version
        self.gate = asyncio.Event()
        self.gate.set()
        self.requests: list[dict] = []
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> SimServer:
        config = uvicorn.Config(self._app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", interface="asgi3",
                                access_log=False, timeout_graceful_shutdown=60)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Graceful: the streams in flight finish first."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            return await _json(send, 200, {})
        if method == "GET" and path == "/v1/models":
            return await _json(send, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return await _json(send, 404, {"error": {"message": f"no route {method} {path}"}})
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        req = json.loads(body)
        self.requests.append(req)
        if req.get("model") != self.model:
            return await _json(send, 404, {"error": {"message": f"model {req.get('model')!r} does not exist"}})
        if not req.get("stream"):
            return await _json(send, 400, {"error": {"message": "this simulator only streams"}})
        chat = path.endswith("chat/completions")
        n = int(req.get("max_tokens") or 16)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(n):
            piece = f"{self.version} "
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if i == n - 1 else None}
            if chat:
                choice["delta"] = {"content": piece}
            else:
                choice["text"] = piece
            await _event(send, {"id": "sim", "object": "text_completion", "model": self.model, "choices": [choice]})
            if i == 0:
                await self.gate.wait()
            await asyncio.sleep(0)
        await _event(send, {"id": "sim", "model": self.model, "choices": [],
                            "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _json(send: Callable, status: int, body: dict) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _event(send: Callable, data: dict) -> None:
    await send({"type": "http.response.body", "body": f"data: {json.dumps(data)}\n\n".encode(), "more_body": True})


@dataclass
class Pod:
    deployment: str
    model_version: str
    server: SimServer
    terminating: bool = False


@dataclass
class Kubelet:
    """Runs the managed Deployments of one node as local `SimServer`s (one replica each)."""

    apps: Any
    core: Any
    namespace: str
    node: str
    pods: dict[str, Pod] = field(default_factory=dict)
    proxy: dict[tuple[str, int], str] = field(default_factory=dict)
    """kube-proxy: (clusterIP, port) -> base URL of a ready pod."""
    terminated: list[Pod] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _stops: set[asyncio.Task] = field(default_factory=set)

    def dial(self, host: str, port: int) -> str:
        return self.proxy.get((host, port), REFUSED)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pod in list(self.pods.values()):
            pod.server.gate.set()
            await pod.server.stop()
        for t in list(self._stops):
            await t

    async def _run(self) -> None:
        sel = f"app.kubernetes.io/managed-by=fleet-agent,fleet.edge/node={self.node}"
        while True:
            deps = await asyncio.to_thread(lambda: self.apps.list_namespaced_deployment(self.namespace, label_selector=sel).items)
            want = {d.metadata.name: d.spec.template.metadata.annotations["fleet.edge/model"] for d in deps}
            for name, pod in list(self.pods.items()):
                if want.get(name) != pod.model_version:
                    self._terminate(name, pod)
            for name, model_version in want.items():
                if name not in self.pods and not any(p.deployment == name for p in self.terminated):
                    # Like a GPU-bound pod: the replacement starts once the old one has exited.
                    try:
                        svc = await asyncio.to_thread(self.core.read_namespaced_service, name, self.namespace)
                    except ApiException as exc:
                        if exc.status == 404:  # the agent applies the Service right after the Deployment
                            continue
                        raise
                    model, _, version = model_version.partition(":")
                    server = await SimServer(model, version).start()
                    self.pods[name] = Pod(name, model_version, server)
                    self.proxy[(svc.spec.cluster_ip, svc.spec.ports[0].port)] = f"http://127.0.0.1:{server.port}"
            await asyncio.sleep(0.1)

    def _terminate(self, name: str, pod: Pod) -> None:
        """Leave the Service's endpoints at once, then stop gracefully (the in-flight streams finish)."""
        del self.pods[name]
        pod.terminating = True
        self.proxy = {k: v for k, v in self.proxy.items() if v != f"http://127.0.0.1:{pod.server.port}"}
        self.terminated.append(pod)

        async def stop() -> None:
            await pod.server.stop()
            self.terminated.remove(pod)

        t = asyncio.create_task(stop())
        self._stops.add(t)
        t.add_done_callback(self._stops.discard)
