"""The demo's load: interactive chat streams and batch completions sent together to each agent.

Plain OpenAI-compatible HTTP, as any client would send it; the data class and
priority class travel in the `X-Fleet-Data-Class` and `X-Fleet-Priority-Class`
headers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Protocol

import httpx

PROMPTS = (
    "Summarise the maintenance window for the Frankfurt edge site.",
    "Which GPUs does the Paris site run, and how busy are they?",
    "Draft a two-line status update for the on-call channel.",
    "Explain time to first token to a new colleague.",
)


class LoadTarget(Protocol):
    label: str
    assignments: tuple[dict, ...]


@dataclass(frozen=True)
class Result:
    node: str
    priority: str
    status: int
    ttft_s: float | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


async def _one(client: httpx.AsyncClient, url: str, node: str, assignment: dict, priority: str,
               prompt: str) -> Result:
    headers = {"X-Fleet-Data-Class": assignment.get("dataClass", ""), "X-Fleet-Priority-Class": priority}
    t0 = time.perf_counter()
    try:
        if priority == "interactive":  # streamed, as a chat UI would
            body = {"model": assignment["model"], "stream": True, "max_tokens": 24,
                    "messages": [{"role": "user", "content": prompt}]}
            ttft = None
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    return Result(node, priority, r.status_code, None, r.text[:200])
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and ttft is None and line != "data: [DONE]":
                        ttft = time.perf_counter() - t0
            return Result(node, priority, 200, ttft)
        body = {"model": assignment["model"], "max_tokens": 48, "prompt": prompt}
        r = await client.post(f"{url}/v1/completions", json=body, headers=headers)
        return Result(node, priority, r.status_code, None, "" if r.status_code == 200 else r.text[:200])
    except httpx.HTTPError as exc:
        return Result(node, priority, 0, None, f"{type(exc).__name__}: {exc}")


async def send_load(nodes: list[LoadTarget], http: dict[str, int], per_node: int) -> list[Result]:
    """``per_node`` requests to every node at once: one in three interactive, the rest batch."""
    jobs = []
    prompts = itertools.cycle(PROMPTS)
    async with httpx.AsyncClient(timeout=120) as client:
        for n in nodes:
            if not n.assignments:
                continue
            url = f"http://127.0.0.1:{http[n.label]}"
            for i in range(per_node):
                priority = "interactive" if i % 3 == 0 else "batch"
                assignment = n.assignments[i % len(n.assignments)]
                jobs.append(_one(client, url, n.label, assignment, priority, next(prompts)))
        return list(await asyncio.gather(*jobs))
