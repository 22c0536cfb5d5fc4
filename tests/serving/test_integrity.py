"""Model integrity (issue 13, item 4): the agent serves only weights whose digest matches the spec.

Real engines on the tiny model, real files: a byte flipped in a weight file after apply is
refused at the next load (the cache of verified files does not hide it) and reported; a
restarted agent verifies again before it serves; an assignment with no digest is refused
unless the spec opted out with ``integrity: none``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.serving.integrity import IntegrityError, WeightsVerifier
from edge_agent.state import LocalObject, LocalState
from fleet_contract.weights import BLOCK, file_sha256, manifest
from tests.serving.conftest import PUBLIC, Harness, site_location, tiny_digest


def flip_one_byte(path: Path, offset: int = 4096) -> None:
    """Corrupt ``path`` in place (same size), as a bad disk or a partial copy would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.fixture
def own_models(models_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model (tests corrupt it; the session's copy stays intact)."""
    root = tmp_path / "models"
    shutil.copytree(models_dir / "tiny" / "v1", root / "tiny" / "v1")
    return root


def placement(digest: str | None = None, **extra: str) -> dict:
    a = {"service": "chat", "model": "tiny", "version": "v1", **extra}
    if digest is not None:
        a["digest"] = digest
    return {"site": "fra-1", "node": "node-a", "assignments": [a]}


# -- the digest itself (fleet_contract.weights) -------------------------------------------------------

def test_the_manifest_digest_covers_every_byte_and_every_file_but_hidden_ones(tmp_path: Path) -> None:
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    big = bytes(range(256)) * (BLOCK // 256 * 3 + 7)  # more than three blocks: hashed in pieces
    (d / "model.safetensors").write_bytes(big)
    (d / "config.json").write_text("{}")
    (d / "sub" / "tokenizer.json").write_text("{}")
    assert file_sha256(d / "model.safetensors") == hashlib.sha256(big).hexdigest()
    m = manifest(d)
    assert [f.path for f in m.files] == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert m.digest.startswith("sha256:") and len(m.digest) == 7 + 64
    assert m.digest == "sha256:" + hashlib.sha256(m.text().encode()).hexdigest()
    (d / ".cache").mkdir()
    (d / ".cache" / "lock").write_text("x")
    (d / ".DS_Store").write_text("x")
    assert manifest(d).digest == m.digest  # hidden files are not weights
    flip_one_byte(d / "model.safetensors", offset=BLOCK + 5)
    assert manifest(d).digest != m.digest
    flip_one_byte(d / "model.safetensors", offset=BLOCK + 5)  # flipped back: the same digest again
    assert manifest(d).digest == m.digest
    (d / "extra.safetensors").write_bytes(b"")
    assert manifest(d).digest != m.digest  # an added shard changes it too


def test_the_verifier_rehashes_a_changed_file_and_only_that_one(own_models: Path) -> None:
    v = WeightsVerifier(own_models)
    good = tiny_digest(own_models)
    total = manifest(own_models / "tiny" / "v1").size
    assert v.check("tiny", "v1", good).decision == "verified"
    assert v.hashed_bytes == total
    assert v.check("tiny", "v1", good).decision == "verified"
    assert v.hashed_bytes == total  # unchanged files: served from the cache
    weights = own_models / "tiny" / "v1" / "model.safetensors"
    flip_one_byte(weights)
    with pytest.raises(IntegrityError, match="have digest sha256:[0-9a-f]{64}, the Model spec says " + good):
        v.check("tiny", "v1", good)
    assert v.hashed_bytes == total + weights.stat().st_size  # only the changed file was read again


# -- serving ------------------------------------------------------------------------------------------

def test_a_byte_flipped_after_apply_is_refused_at_the_next_load_and_reported(harness, own_models: Path) -> None:
    h: Harness = harness(models_dir=own_models, default_data_class="public").start()
    h.apply("ResidencyPolicy", "public", PUBLIC)
    good = tiny_digest(own_models)
    h.apply("Placement", "p", placement(good))
    reg = h.serving.registry
    assert [(b.model, b.version) for b in reg.backends()] == [("tiny", "v1")]
    (ok,) = h.kinds("integrity")
    assert (ok["decision"], ok["digest"], ok["expected"]) == ("verified", good, good)

    flip_one_byte(own_models / "tiny" / "v1" / "model.safetensors")
    h.remove("Placement", "p")
    with pytest.raises(IntegrityError, match="refusing to serve them") as info:
        h.apply("Placement", "p", placement(good))
    assert "fleet model digest" in str(info.value)  # names what to run
    assert reg.backends() == [] and reg.assignments() == []  # not served
    r = httpx.post(f"{h.url}/v1/completions", json={"model": "chat", "prompt": "hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 404
    bad = h.kinds("integrity")[-1]
    assert bad["decision"] == "refused" and bad["expected"] == good
    assert bad["digest"] == manifest(own_models / "tiny" / "v1").digest != good


def test_no_digest_is_refused_unless_the_spec_opts_out(harness, own_models: Path) -> None:
    h: Harness = harness(models_dir=own_models).start()
    with pytest.raises(IntegrityError, match="carries no weights digest"):
        h.apply("Placement", "p", placement())
    assert h.serving.registry.backends() == []
    assert h.kinds("integrity")[-1]["decision"] == "refused"
    h.apply("Placement", "p", placement(integrity="none"))  # the explicit opt-out
    assert [(b.model, b.version) for b in h.serving.registry.backends()] == [("tiny", "v1")]
    last = h.kinds("integrity")[-1]
    assert last["decision"] == "unverified" and last["digest"] == tiny_digest(own_models)


async def test_a_restarted_agent_verifies_again_before_it_serves(tmp_path: Path, own_models: Path) -> None:
    good = tiny_digest(own_models)
    data = tmp_path / "agent"
    state = LocalState(data)
    for i, (kind, name, spec) in enumerate([
        ("SiteLocation", "fra-1", site_location("fra-1", "DE")), ("ResidencyPolicy", "public", PUBLIC),
        ("Placement", "fra-1.a", {"site": "fra-1", "node": "a", "assignments": [
            {"service": "chat", "model": "tiny", "version": "v1", "digest": good}]}),
    ], start=1):
        state.save(LocalObject(f"id-{i}", kind, name, i, spec))
    state.close()
    cfg = AgentConfig(hub="127.0.0.1:1", site="fra-1", node="a", data_dir=data, insecure=True, country="DE",
                      jurisdiction="EU", serve_port=0, grpc_port=0, models_dir=own_models,
                      default_data_class="public", backoff_initial_s=5.0)

    async def run_once() -> tuple[int, list[str]]:
        (data / "serve.json").unlink(missing_ok=True)
        agent = Agent(cfg, probe_gpus=False)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            deadline = time.monotonic() + 120
            while not (data / "serve.json").exists():
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.05)
            port = json.loads((data / "serve.json").read_text())["http"]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                r = await c.post("/v1/completions", json={"model": "chat", "prompt": "hi", "max_tokens": 2})
            # (the hub link's own errors are there too: no hub listens at 127.0.0.1:1)
            return r.status_code, [e for e in agent.link.status.recent_errors if "restore" in e]
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    status, errors = await run_once()
    assert status == 200 and errors == []
    flip_one_byte(own_models / "tiny" / "v1" / "model.safetensors")  # while the agent is down
    status, errors = await run_once()
    assert status == 404  # restored from local state, but not served: its weights changed
    assert any("could not restore Placement/fra-1.a" in e and "refusing to serve them" in e for e in errors)
    state = LocalState(data)
    try:
        checks = [p.payload for p in state.pending(0, 1000) if p.kind == "integrity"]
    finally:
        state.close()
    assert [c["decision"] for c in checks] == ["verified", "refused"]  # both reach the hub (the outbox)
