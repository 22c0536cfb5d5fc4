"""Make a randomly initialised Llama model in Hugging Face format, locally.

Nothing can be downloaded at the edge sites we test on, so tests, demos and
benchmarks build their own model: a real Llama architecture
(``transformers.LlamaForCausalLM``) with random weights and a byte-level BPE
tokenizer trained here (:mod:`edge_agent.runtime.local_tokenizer`). The
output directory looks like any Hub checkout (``config.json``,
``model.safetensors``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json``), so loading real weights uses the same code path.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Literal

from edge_agent.runtime.local_tokenizer import build_tokenizer

log = logging.getLogger(__name__)

Size = Literal["tiny", "small", "1b"]

SIZES: dict[str, dict[str, Any]] = {
    # ~4M parameters: fast unit tests.
    "tiny": dict(
        vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=688, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.2,
    ),
    # ~32M parameters: CPU benchmarks.
    "small": dict(
        vocab_size=8192, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=1408, max_position_embeddings=2048,
        tie_word_embeddings=False, initializer_range=0.2,
    ),
    # ~1.1B parameters, TinyLlama-1.1B shaped: GPU checks.
    "1b": dict(
        vocab_size=32000, hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, intermediate_size=5632, max_position_embeddings=2048,
        tie_word_embeddings=False,
    ),
}
"""Llama shapes per size name (LlamaConfig keyword arguments).

``initializer_range`` 0.2 (HF default 0.02) for the test sizes makes a random
model's greedy output varied instead of one repeated token, so token-equality
tests actually discriminate; top-1/top-2 logit margins stay far above float
noise."""


def make_model(
    size: Size,
    out_dir: Path,
    seed: int = 0,
    *,
    dtype: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Build a random Llama model of ``size`` with a local tokenizer into ``out_dir``.

    Args:
        size: ``tiny`` (~4M params), ``small`` (~32M) or ``1b`` (~1.1B).
        out_dir: target directory (created; existing files are overwritten).
        seed: seeds both the weights and the tokenizer corpus.
        dtype: weight dtype saved to disk (``float32``, ``bfloat16``,
            ``float16``); default ``float32``, ``bfloat16`` for ``1b``.
        overrides: LlamaConfig fields replacing the size's defaults (tests use
            this for e.g. ``tie_word_embeddings`` or ``rope_parameters``).

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = {**SIZES[size], **(overrides or {})}
    tok = build_tokenizer(shape["vocab_size"], out_dir, seed=seed, model_max_length=shape["max_position_embeddings"])
    shape["vocab_size"] = tok.get_vocab_size()
    bos, eos, pad = tok.token_to_id("<s>"), tok.token_to_id("</s>"), tok.token_to_id("<pad>")
    config = LlamaConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **shape)
    torch_dtype = getattr(torch, dtype or ("bfloat16" if size == "1b" else "float32"))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch_dtype)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("made %s model (%.1fM parameters) in %s", size, n_params / 1e6, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: ``make-model --size tiny|small|1b [--seed N] [--dtype D] DIR``."""
    parser = argparse.ArgumentParser(prog="make-model", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    out = make_model(args.size, args.dir, seed=args.seed, dtype=args.dtype)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
