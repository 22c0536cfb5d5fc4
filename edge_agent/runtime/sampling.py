"""Token selection from logits: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edge_agent.runtime.request import SamplingParams


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set with cumulative probability >= top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """Pick one token per row of ``logits`` [B, V] (float32) according to ``params``."""
    greedy = logits.argmax(dim=-1)
    if all(p.temperature == 0.0 for p in params):
        return greedy.tolist()
    out = greedy.tolist()
    for i, (p, gen) in enumerate(zip(params, generators)):
        if p.temperature == 0.0:
            continue
        row = top_p_filter(logits[i] / p.temperature, p.top_p)
        probs = torch.softmax(row, dim=-1)
        if gen is not None and gen.device != probs.device:
            probs = probs.to(gen.device)
        out[i] = int(torch.multinomial(probs, 1, generator=gen).item())
    return out
