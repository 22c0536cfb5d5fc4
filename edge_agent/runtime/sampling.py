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


def logprobs(logits: torch.Tensor, picked: Sequence[int],
             top: Sequence[int]) -> list[tuple[float, list[tuple[int, float]]]]:
    """Per row of ``logits`` [B, V]: the log-probability of ``picked[i]`` and the ``top[i]`` most likely
    (token id, log-probability) pairs.

    These are the model's own distribution (log-softmax of the raw logits), not the one after
    temperature and top-p that the token was drawn from: what OpenAI and vLLM (by default) report,
    and comparable across requests whatever their sampling settings.
    """
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(-1, torch.tensor(list(picked), dtype=torch.long, device=lp.device).view(-1, 1)).view(-1)
    k = max(top, default=0)
    alts: list[list[tuple[int, float]]] = [[] for _ in picked]
    if k > 0:
        vals, ids = torch.topk(lp, k, dim=-1)
        for i, (row_v, row_i) in enumerate(zip(vals.tolist(), ids.tolist())):
            alts[i] = list(zip(row_i, row_v))[: top[i]]
    return [(c, a) for c, a in zip(chosen.tolist(), alts)]


def chosen_logprobs(logits: torch.Tensor, picked: Sequence[int]) -> list[float]:
    """Per row of ``logits`` [B, V]: the log-probability of ``picked[i]`` under the model.

    One gather and one logsumexp over the batch (no full log-softmax tensor kept): cheap enough to
    run on every step for the drift signal, whether or not the request asked for logprobs.
    """
    if not len(picked):
        return []
    x = logits.float()
    idx = torch.tensor(list(picked), dtype=torch.long, device=x.device).view(-1, 1)
    return (x.gather(-1, idx).view(-1) - torch.logsumexp(x, dim=-1)).tolist()
