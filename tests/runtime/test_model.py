"""Our Llama implementation matches transformers token for token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from edge_agent.runtime.kv_cache import KVCache
from edge_agent.runtime.make_model import make_model
from edge_agent.runtime.model import LlamaModel, load_model

PROMPTS = [[1, 50, 60, 70, 80, 90, 100], [1, 5], [1, 3000, 17, 999, 4, 4, 4, 2048, 12, 13, 300]]


def greedy(model: LlamaModel, prompt: list[int], n: int) -> list[int]:
    """Plain one-sequence greedy decoding through the cache (slot 0)."""
    s = model.shape
    cache = KVCache(s.num_layers, 1, 128, s.num_kv_heads, s.head_dim, "cpu", model.dtype)
    slot = torch.tensor([0])
    logits = model(torch.tensor([prompt]), torch.arange(len(prompt))[None], slot, cache, len(prompt))
    out: list[int] = []
    pos = len(prompt)
    for _ in range(n):
        tok = int(logits.argmax(-1))
        out.append(tok)
        logits = model(torch.tensor([[tok]]), torch.tensor([[pos]]), slot, cache, pos + 1)
        pos += 1
    return out


def hf_greedy(hf: LlamaForCausalLM, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=3)
    return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers_generate(tiny_model: LlamaModel, hf_tiny: LlamaForCausalLM) -> None:
    for prompt in PROMPTS[::2]:
        ours = greedy(tiny_model, prompt, 16)
        assert ours == hf_greedy(hf_tiny, prompt, 16)
        assert len(set(ours)) > 5  # the random model is not degenerate, so equality means something


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False, "attention_bias": True},
        {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}},
    ],
    ids=["untied-bias", "llama3-rope", "linear-rope"],
)
def test_variants_match_transformers_logits(tmp_path: Path, overrides: dict) -> None:
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 96, "vocab_size": 512}
    d = make_model("tiny", tmp_path, seed=1, overrides={**small, **overrides})
    ours = load_model(d, device="cpu")
    hf = LlamaForCausalLM.from_pretrained(d).eval()
    ids = torch.randint(0, ours.shape.vocab_size, (2, 90), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = hf(ids).logits[:, -1]
    s = ours.shape
    cache = KVCache(s.num_layers, 2, 128, s.num_kv_heads, s.head_dim, "cpu", torch.float32)
    got = ours(ids, torch.arange(90).expand(2, 90), torch.tensor([1, 0]), cache, 90)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_padded_batched_prefill_equals_single(tiny_model: LlamaModel) -> None:
    s = tiny_model.shape
    cache = KVCache(s.num_layers, 3, 64, s.num_kv_heads, s.head_dim, "cpu", torch.float32)
    width = max(map(len, PROMPTS))
    tokens = torch.zeros((3, width), dtype=torch.long)
    positions = torch.full((3, width), cache.scratch_position)
    for i, p in enumerate(PROMPTS):
        tokens[i, : len(p)] = torch.tensor(p)
        positions[i, : len(p)] = torch.arange(len(p))
    batched = tiny_model(tokens, positions, torch.tensor([2, 0, 1]), cache, width,
                         torch.tensor([len(p) - 1 for p in PROMPTS]))
    for i, p in enumerate(PROMPTS):
        single = tiny_model(torch.tensor([p]), torch.arange(len(p))[None], torch.tensor([0]), cache, len(p))
        torch.testing.assert_close(batched[i], single[0], rtol=1e-4, atol=1e-4)


def test_checkpoint_missing_tensor_is_an_error(tmp_path: Path, tiny_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    for name in ("config.json",):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    weights = load_file(tiny_dir / "model.safetensors")
    weights.pop("model.norm.weight")
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="norm.weight"):
        load_model(tmp_path, device="cpu")
