"""Residency and priority at the door, shedding, and cancellation, over real HTTP."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import openai
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.link import HubLink
from edge_agent.runtime.engine import EngineConfig
from edge_agent.runtime.scheduler import SchedulerConfig
from edge_agent.serving.telemetry import Outcome, RequestRecord
from tests.serving.conftest import Harness, wait_until

BODY = {"model": "tiny", "prompt": "The agent serves", "max_tokens": 4, "temperature": 0}


def post(h: Harness, headers: dict, body: dict = BODY) -> httpx.Response:
    with httpx.Client(base_url=h.url) as c:
        return c.post("/v1/completions", json=body, headers=headers)


def with_outbox(h: Harness, tmp_path: Path) -> HubLink:
    """Route the harness's reports through a real HubLink into a real durable outbox."""
    cfg = AgentConfig(hub="127.0.0.1:1", site="fra-1", node="node-a", data_dir=tmp_path, insecure=True)
    agent = Agent(cfg, probe_gpus=False)
    h.report = agent.link.report
    h.agent = agent
    return agent.link


def outbox(h: Harness, kind: str) -> list[dict]:
    return [p.payload for p in h.agent.state.pending(0, 1000) if p.kind == kind]


def test_allowed_class_is_served_forbidden_is_403_and_audited(harness, tmp_path: Path) -> None:
    h = harness(site="iad-1", country="US", jurisdiction="US").standard().start()
    with_outbox(h, tmp_path)
    try:
        assert post(h, {"X-Fleet-Data-Class": "personal-us"}).status_code == 200
        assert post(h, {"X-Fleet-Data-Class": "public"}).status_code == 200
        r = post(h, {"X-Fleet-Data-Class": "personal-de"})
        assert r.status_code == 403
        err = r.json()["error"]
        assert err["message"] == ("data class 'personal-de' may not be processed at site iad-1 (US, jurisdiction US): "
                                  "ResidencyPolicy 'germany-only' allows countries [DE]")
        assert err["type"] == "permission_error" and err["code"] == "data_residency"
        (audit,) = outbox(h, "audit")
        assert audit["decision"] == "deny" and audit["dataClass"] == "personal-de" and audit["site"] == "iad-1"
        assert audit["policy"] == "germany-only" and audit["reason"] == err["message"]
        assert audit["requestId"] and audit["time"].endswith("Z")
        # the openai client sees a typed error
        with openai.OpenAI(base_url=f"{h.url}/v1", api_key="x", max_retries=0,
                           default_headers={"X-Fleet-Data-Class": "personal-eu"}) as c:
            with pytest.raises(openai.PermissionDeniedError, match="eu-gdpr"):
                c.completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert len(outbox(h, "audit")) == 2
    finally:
        h.agent.state.close()


def test_unknown_class_missing_class_and_no_policy_are_refused(harness) -> None:
    h = harness().standard().start()
    r = post(h, {"X-Fleet-Data-Class": "secret"})
    assert r.status_code == 403 and "no ResidencyPolicy" in r.json()["error"]["message"]
    r = post(h, {})
    assert r.status_code == 403 and "names no data class" in r.json()["error"]["message"]
    assert [a["decision"] for a in h.kinds("audit")] == ["deny", "deny"]
    # the default data class applies when the header is absent
    d = harness(default_data_class="personal-eu").standard().start()
    assert post(d, {}).status_code == 200
    # a node that never got a policy refuses everything (fail-closed)
    bare = harness(default_data_class="public").start()
    bare.apply("Placement", "p", {"node": "node-a", "assignments": [{"service": "s", "model": "tiny", "version": "v1",
                                                                "digest": bare.digest}]})
    r = post(bare, {"X-Fleet-Data-Class": "public"})
    assert r.status_code == 403 and "no ResidencyPolicy" in r.json()["error"]["message"]
    # removing a policy takes effect at once
    d.remove("ResidencyPolicy", "eu-gdpr")
    assert post(d, {}).status_code == 403


def test_residency_is_checked_before_the_model(harness) -> None:
    """Refused data is refused whatever model it names, also one not loaded (yet): 403, not 404, and
    audited, so a refused caller learns nothing about what the node serves. (fleet demo once sent its
    residency probe to a node still loading its model and got a 404.)"""
    h = harness(site="iad-1", country="US", jurisdiction="US").standard().start()
    for model in ("not-loaded-yet", "tiny"):
        r = post(h, {"X-Fleet-Data-Class": "personal-de"}, {**BODY, "model": model})
        assert r.status_code == 403 and r.json()["error"]["code"] == "data_residency", (model, r.text)
    assert [(a["decision"], a["model"]) for a in h.kinds("audit")] == [("deny", "not-loaded-yet"),
                                                                        ("deny", "tiny:v1")]
    # an allowed class still learns that the model is not here
    r = post(h, {"X-Fleet-Data-Class": "public"}, {**BODY, "model": "not-loaded-yet"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_priority_class_maps_to_the_engine_and_slos(harness) -> None:
    h = harness(default_priority_class="batch").standard(ttftSloS=5.0, tpotSloS=1.0).start()
    seen: list[RequestRecord] = []
    h.serving.telemetry.observers.append(seen.append)
    eu = {"X-Fleet-Data-Class": "personal-eu"}
    assert post(h, {**eu, "X-Fleet-Priority-Class": "interactive"}).status_code == 200
    assert post(h, eu, {**BODY, "priority": "background"}).status_code == 200
    assert post(h, eu).status_code == 200  # no class named: the agent's default
    assert [(r.priority, r.stats.priority) for r in seen] == [("interactive", 1000), ("background", -10),
                                                              ("batch", 100)]
    r = post(h, {**eu, "X-Fleet-Priority-Class": "vip"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"
    # the placement's priorityClass is the service's default
    p = harness().standard(priorityClass="interactive").start()
    got: list[RequestRecord] = []
    p.serving.telemetry.observers.append(got.append)
    assert post(p, eu, {**BODY, "model": "chat"}).status_code == 200
    assert got[0].priority == "interactive" and got[0].stats.priority == 1000


def test_shed_requests_get_503_with_retry_after(harness) -> None:
    cfg = EngineConfig(max_batch=4, max_len=256, device="cpu", scheduler=SchedulerConfig(shed_queue_depth=0))
    h = harness(engine_config=cfg).standard().start()
    r = post(h, {"X-Fleet-Data-Class": "public", "X-Fleet-Priority-Class": "background"})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "overloaded"
    assert post(h, {"X-Fleet-Data-Class": "public", "X-Fleet-Priority-Class": "interactive"}).status_code == 200
    payload = h.serving.flush()
    groups = {g["priority"]: g for g in payload["groups"]}
    assert groups["background"]["rejected"] == 1 and groups["interactive"]["requests"] == 1


def test_storm_of_cancelled_streams_returns_kv_to_baseline(harness) -> None:
    h = harness().standard().start()
    (backend,) = h.serving.registry.backends()
    engine = backend.engine
    baseline = engine.kv_usage()
    first_tokens = []
    errors = []

    def one(i: int) -> None:
        try:
            with httpx.Client(base_url=h.url, timeout=60) as c:
                body = {"model": "tiny", "prompt": f"request {i} says", "max_tokens": 200, "stream": True,
                        "ignore_eos": True}
                with c.stream("POST", "/v1/completions", json=body, headers={"X-Fleet-Data-Class": "public"}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            first_tokens.append(i)
                            break  # disconnect after the first token
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    seen: list[RequestRecord] = []
    h.serving.telemetry.observers.append(seen.append)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(first_tokens) == 50
    wait_until(lambda: engine.stats().running == 0 and engine.stats().waiting == 0, what="the engine to go idle")
    after = engine.kv_usage()
    assert after.slots_used == baseline.slots_used == 0 and after.tokens_used == baseline.tokens_used
    wait_until(lambda: len(seen) == 50, what="every request to be recorded")
    payload = h.serving.flush()
    (group,) = payload["groups"]
    assert group["requests"] == 50 and group["cancelled"] == 50
    assert group["outputTokens"] < 50 * 200  # none ran to the end


def test_placement_errors_removal_and_versions(harness, tmp_path: Path) -> None:
    h = harness().standard().start()
    reg = h.serving.registry
    with pytest.raises(FileNotFoundError, match="no model at"):
        h.apply("Placement", "bad", {"node": "node-a", "assignments": [
            {"service": "x", "model": "tiny", "version": "v9"}]})
    assert [(b.model, b.version) for b in reg.backends()] == [("tiny", "v1")]  # still serving
    assert post(h, {"X-Fleet-Data-Class": "public"}).status_code == 200
    # a second version: the bare name picks the highest, model:version picks exactly
    h.apply("Placement", "two", {"node": "node-a", "assignments": [{"service": "y", "model": "tiny", "version": "v2",
                                                           "digest": h.digest}]})
    assert sorted((b.model, b.version) for b in reg.backends()) == [("tiny", "v1"), ("tiny", "v2")]
    assert reg.resolve("tiny")[0].version == "v2" and reg.resolve("tiny:v1")[0].version == "v1"
    assert reg.resolve("chat")[0].version == "v1"
    old = reg.resolve("tiny:v1")[0].engine
    h.remove("Placement", "fra-1.node-a")
    wait_until(lambda: old._thread is None, what="v1 to drain and unload")
    r = post(h, {"X-Fleet-Data-Class": "public"}, {**BODY, "model": "tiny:v1"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert post(h, {"X-Fleet-Data-Class": "public"}).status_code == 200  # v2 serves on


def test_disconnect_while_waiting_for_a_whole_completion_cancels_it(harness) -> None:
    import socket

    h = harness().standard().start()
    (backend,) = h.serving.registry.backends()
    engine = backend.engine
    seen: list[RequestRecord] = []
    h.serving.telemetry.observers.append(seen.append)
    body = json.dumps({"model": "tiny", "prompt": "long story", "max_tokens": 240, "ignore_eos": True}).encode()
    sock = socket.create_connection(("127.0.0.1", h.serving.http_port))
    try:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Fleet-Data-Class: public\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: engine.stats().running == 1, what="the request to run")
    finally:
        sock.close()
    wait_until(lambda: seen, what="the request to be recorded")
    wait_until(lambda: engine.stats().running == 0 and engine.kv_usage().slots_used == 0, what="the KV slot to free")
    assert seen[0].outcome is Outcome.CANCELLED and seen[0].stats.output_tokens < 240


def test_a_version_switch_in_place_keeps_serving_and_drains_the_old_version(harness, models_dir: Path) -> None:
    """Issue 5's zero-downtime switch: load and warm v2, move new requests to it, let v1's
    in-flight stream finish, then unload v1 — all from one changed Placement object."""
    h = harness().standard().start()
    reg = h.serving.registry
    old = reg.resolve("chat")[0]
    with httpx.Client(base_url=h.url, timeout=120) as c, c.stream(
        "POST", "/v1/completions", headers={"X-Fleet-Data-Class": "public"},
        json={"model": "chat", "prompt": "a long answer", "max_tokens": 120, "ignore_eos": True, "stream": True},
    ) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert old.engine.stats().running == 1  # v1 is mid-stream when the new version arrives
        h.apply("Placement", "fra-1.node-a", {"site": "fra-1", "node": "node-a", "assignments": [
            {"service": "chat", "model": "tiny", "version": "v2", "replicas": 1, "gpuType": "cpu",
             "digest": h.digest}]})
        new = reg.resolve("chat")[0]
        assert (old.version, new.version) == ("v1", "v2")  # new requests go to v2 at once
        assert post(h, {"X-Fleet-Data-Class": "public"}, {**BODY, "model": "chat"}).status_code == 200
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"  # the v1 stream was not cut
    assert sum(json.loads(x[6:])["choices"][0]["text"] != "" for x in rest[:-1] if '"choices"' in x) > 50
    wait_until(lambda: old.engine._thread is None, what="v1 to drain and unload")
    # A version that cannot load leaves v2 serving, and the apply fails (the hub sees it not-ok).
    with pytest.raises(FileNotFoundError):
        h.apply("Placement", "fra-1.node-a", {"site": "fra-1", "node": "node-a", "assignments": [
            {"service": "chat", "model": "tiny", "version": "v9", "replicas": 1, "gpuType": "cpu"}]})
    assert reg.resolve("chat")[0] is new
    assert post(h, {"X-Fleet-Data-Class": "public"}, {**BODY, "model": "chat"}).status_code == 200
