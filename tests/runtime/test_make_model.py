"""make_model builds a loadable HF-format Llama with a local tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from edge_agent.runtime.make_model import SIZES, main
from edge_agent.runtime.model import LlamaShape


def test_tiny_files_config_and_tokenizer(tiny_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_dir / name).is_file(), name
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    shape = LlamaShape.from_hf_config(cfg)
    assert 1e6 < shape.param_count() < 10e6
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert len(tok) == cfg["vocab_size"]
    ids = tok("The agent serves models.").input_ids
    assert ids[0] == cfg["bos_token_id"]
    assert tok.decode(ids, skip_special_tokens=True) == "The agent serves models."
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"


@pytest.mark.parametrize(("size", "low", "high"), [("small", 20e6, 50e6), ("1b", 1.0e9, 1.2e9)])
def test_size_shapes(size: str, low: float, high: float) -> None:
    shape = LlamaShape.from_hf_config({"model_type": "llama", **SIZES[size]})
    assert low < shape.param_count() < high
    if size == "1b":  # TinyLlama-1.1B's shape
        assert (shape.hidden_size, shape.num_layers, shape.num_heads, shape.num_kv_heads, shape.intermediate_size) == (
            2048, 22, 32, 4, 5632)


def test_cli_is_deterministic(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "tiny", "--seed", "0", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "m" / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    from edge_agent.runtime.make_model import make_model

    with pytest.raises(ValueError, match="unknown size"):
        make_model("huge", tmp_path)  # type: ignore[arg-type]
