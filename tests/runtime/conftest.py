"""Shared fixtures: one tiny model per session, an engine per test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.runtime.make_model import make_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` model, built once per session."""
    return make_model("tiny", tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):  # noqa: ANN201 - LlamaModel, imported lazily
    from edge_agent.runtime.model import load_model

    return load_model(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def hf_tiny(tiny_dir: Path):  # noqa: ANN201
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_dir).eval()


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    """A test that leaves an engine thread running fails."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.name == "edge-engine" and t.is_alive()]
    assert not left, f"engine threads left running: {left}"
