"""Real log-probabilities for the drift benchmark: three tiny local models run by our own engine.

* ``base``: :func:`~edge_agent.runtime.make_model.make_model` ("tiny", seed 0), the version in service.
* ``swap``: the same shape and tokenizer, trained differently: ``base`` fine-tuned for a few
  steps (AdamW) on the local pseudo-language corpus, the way a retrained checkpoint
  replaces another under the same name.
* ``corrupt``: ``base`` with Gaussian noise (``noise`` times the weights' standard deviation)
  added to one layer (the token embedding), as a damaged copy of the file at one site.

Each is served by :class:`~edge_agent.runtime.engine.Engine` on prompts drawn from the
corpus with sampling at temperature 1; the pool of per-request mean log-probabilities
(``RequestStats.mean_logprob``, what the agent sends) is what the simulation draws from.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

CORRUPT_LAYER = "model.embed_tokens.weight"
"""The token embedding (tied to the output head in the tiny model): noise there moves every logit."""


def _load(d: Path):  # noqa: ANN202 - transformers types, imported lazily
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(d, torch_dtype="float32")


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def build(root: Path, *, train_steps: int = 30, noise: float = 0.3, seed: int = 0) -> dict[str, Path]:
    """Make the three model directories under ``root``; returns name -> directory."""
    import torch
    from tokenizers import Tokenizer

    from edge_agent.runtime.local_tokenizer import generate_corpus
    from edge_agent.runtime.make_model import make_model

    base = make_model("tiny", root / "base", seed=seed)
    dirs = {"base": base, "swap": root / "swap", "corrupt": root / "corrupt"}

    _copy(base, dirs["swap"])
    model = _load(base)
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    lines = generate_corpus(n_words=20_000, seed=seed + 1)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        batch = [tok.encode(" ".join(rng.sample(lines, 4))).ids[:64] for _ in range(8)]
        width = min(len(b) for b in batch)
        ids = torch.tensor([b[:width] for b in batch])
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(dirs["swap"])

    _copy(base, dirs["corrupt"])
    model = _load(base)
    with torch.no_grad():
        w = dict(model.named_parameters())[CORRUPT_LAYER]
        g = torch.Generator().manual_seed(seed + 7)
        w.add_(torch.randn(w.shape, generator=g) * noise * float(w.std()))
    model.save_pretrained(dirs["corrupt"])
    return dirs


def logprob_pool(model_dir: Path, n: int, *, max_tokens: int = 48, seed: int = 0) -> list[float]:
    """Negated mean log-probability of each of ``n`` sampled requests served by the engine."""
    from edge_agent.runtime.engine import Engine, EngineConfig
    from edge_agent.runtime.local_tokenizer import generate_corpus
    from edge_agent.runtime.request import SamplingParams

    lines = generate_corpus(n_words=20_000, seed=seed + 2)
    rng = random.Random(seed)
    engine = Engine(model_dir, EngineConfig(max_batch=32, max_len=256, device="cpu")).start()
    try:
        handles = []
        for i in range(n):
            prompt = " ".join(rng.sample(lines, rng.randint(1, 3)))[:400]
            params = SamplingParams(max_tokens=rng.randint(4, max_tokens), temperature=1.0, seed=seed * 100_003 + i)
            handles.append(engine.submit(prompt, params))
        out = []
        for h in handles:
            mean = h.result(600).stats.mean_logprob
            if mean is not None:
                out.append(-mean)
        return out
    finally:
        engine.shutdown()
