"""A compact Llama implementation that reads Hugging Face checkpoints.

Reads ``config.json`` and ``*.safetensors`` (single file or sharded with an
index) by Hugging Face tensor names, so a model made by
:func:`edge_agent.runtime.make_model.make_model` and real Llama-family
weights load through the same code. Supports RMSNorm, rotary embeddings
(default, ``linear`` and ``llama3`` scaling), grouped-query attention,
SwiGLU MLP and tied or untied output embeddings.

The forward pass works directly on a KV cache (slot-based
:class:`edge_agent.runtime.kv_cache.KVCache` or block-based
:class:`~edge_agent.runtime.kv_cache.PagedKVCache`): every row of a batch
names its sequence's slot (or block table) and the absolute position of each
of its tokens, so prefill,
chunked prefill, resume-by-recompute and batched decode are one code path.
q/k/v and gate/up projections are fused into one matmul each.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from edge_agent.runtime.kv_cache import Addressing, KVCache, PagedKVCache


@dataclass(frozen=True)
class LlamaShape:
    """The architecture fields of a Llama ``config.json`` that this implementation uses."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """HF ``rope_scaling`` / ``rope_parameters`` minus the theta; None = default RoPE."""
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    torch_dtype: str = "float32"
    """Dtype the checkpoint was saved in (``dtype`` or ``torch_dtype`` in config.json)."""

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> LlamaShape:
        """Read a Hugging Face Llama ``config.json`` (transformers 4.x or 5.x layout)."""
        if cfg.get("model_type") not in (None, "llama", "mistral", "qwen2"):
            raise ValueError(f"unsupported model_type {cfg.get('model_type')!r}: only Llama-style models")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {cfg.get('hidden_act')!r}")
        heads = int(cfg["num_attention_heads"])
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            intermediate_size=int(cfg["intermediate_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=None if rope_type == "default" else rope,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"),
        )

    def param_count(self) -> int:
        """Number of parameters (embeddings counted once when tied)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attn = h * self.num_heads * self.head_dim * 2 + h * kv * 2
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + emb + h


def rope_inv_freq(shape: LlamaShape) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with ``linear``/``llama3`` scaling."""
    dim = shape.head_dim
    inv = 1.0 / (shape.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    sc = shape.rope_scaling
    if not sc:
        return inv.float()
    kind = sc.get("rope_type", sc.get("type"))
    factor = float(sc.get("factor", 1.0))
    if kind == "linear":
        return (inv / factor).float()
    if kind == "llama3":
        low, high = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old_len = float(sc["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled).float()
    raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, linear, llama3)")


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 as Hugging Face does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention reading and writing a KV cache through an :class:`Addressing`."""

    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.h, self.kv, self.d = s.num_heads, s.num_kv_heads, s.head_dim
        self.qkv = nn.Linear(s.hidden_size, (self.h + 2 * self.kv) * self.d, bias=s.attention_bias)
        self.o = nn.Linear(self.h * self.d, s.hidden_size, bias=s.attention_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        addr: Addressing,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.d, self.kv * self.d, self.kv * self.d], dim=-1)
        q = q.view(b, t, self.h, self.d)
        k = k.view(b, t, self.kv, self.d)
        v = v.view(b, t, self.kv, self.d)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        cache_k.index_put_(addr.write, k)
        cache_v.index_put_(addr.write, v)
        keys = addr.read(cache_k).transpose(1, 2)  # [b, kv, L, d]
        values = addr.read(cache_v).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=True)
        return self.o(out.transpose(1, 2).reshape(b, t, self.h * self.d))


class MLP(nn.Module):
    """SwiGLU feed-forward with fused gate/up projection."""

    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.n = s.intermediate_size
        self.gate_up = nn.Linear(s.hidden_size, 2 * self.n, bias=s.mlp_bias)
        self.down = nn.Linear(self.n, s.hidden_size, bias=s.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.n, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """One decoder layer: pre-norm attention and pre-norm MLP with residuals."""

    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.attn = Attention(s)
        self.mlp_norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.mlp = MLP(s)


class LlamaModel(nn.Module):
    """Llama decoder with an lm head, operating on a :class:`KVCache` or :class:`PagedKVCache`."""

    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.lm_head = None if shape.tie_word_embeddings else nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def prepare_rope(self, max_positions: int) -> None:
        """Precompute cos/sin tables for positions ``[0, max_positions)``."""
        inv = rope_inv_freq(self.shape).to(self.device)
        freqs = torch.outer(torch.arange(max_positions, device=self.device, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos, self._sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        cache: KVCache | PagedKVCache,
        kv_len: int,
        logit_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``tokens`` [B, T] at ``positions`` [B, T] for cache ``slots`` [B].

        K/V of every token are written to its slot (paged: the block its
        sequence's table maps that position to) at its position (padding
        tokens should use position ``cache.max_len``, the scratch row); each
        query attends to cache positions ``<=`` its own within ``[0, kv_len)``.
        Returns float32 logits [B, V] at ``logit_index`` [B] (an index into T),
        or at the last column when it is None.
        """
        if self._cos is None or self._cos.shape[0] < cache.max_len + 1:
            self.prepare_rope(max(cache.max_len + 1, self.shape.max_position_embeddings))
        assert self._cos is not None and self._sin is not None
        b, t = tokens.shape
        x = self.embed(tokens)
        cos = self._cos[positions].unsqueeze(2)
        sin = self._sin[positions].unsqueeze(2)
        key_pos = torch.arange(kv_len, device=tokens.device)
        mask = (key_pos[None, None, None, :] <= positions[:, None, :, None])
        addr = cache.addressing(slots, positions, kv_len)
        for i, blk in enumerate(self.blocks):
            x = x + blk.attn(blk.attn_norm(x), cos, sin, cache.k[i], cache.v[i], addr, mask)
            x = x + blk.mlp(blk.mlp_norm(x))
        if logit_index is None:
            h = x[:, -1]
        else:
            h = x[torch.arange(b, device=x.device), logit_index]
        h = self.norm(h)
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight).float()


def _hf_to_local(name: str) -> str | None:
    """Map a Hugging Face tensor name to this module's name (None = ignore)."""
    if name == "model.embed_tokens.weight":
        return "embed.weight"
    if name == "model.norm.weight":
        return "norm.weight"
    if name == "lm_head.weight":
        return "lm_head.weight"
    parts = name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"]:
        return None
    i, rest = parts[2], ".".join(parts[3:])
    table = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "mlp_norm.weight",
        "self_attn.o_proj.weight": "attn.o.weight",
        "self_attn.o_proj.bias": "attn.o.bias",
        "mlp.down_proj.weight": "mlp.down.weight",
        "mlp.down_proj.bias": "mlp.down.bias",
    }
    if rest in table:
        return f"blocks.{i}.{table[rest]}"
    return None


_FUSED = {
    "self_attn.q_proj": ("attn.qkv", 0), "self_attn.k_proj": ("attn.qkv", 1), "self_attn.v_proj": ("attn.qkv", 2),
    "mlp.gate_proj": ("mlp.gate_up", 0), "mlp.up_proj": ("mlp.gate_up", 1),
}


def _safetensor_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    return files


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    model_dir: Path | str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LlamaModel:
    """Load a Hugging Face Llama directory (config.json + safetensors) as :class:`LlamaModel`.

    ``device`` defaults to CUDA when present, else CPU. ``dtype`` defaults to
    the checkpoint's dtype on CUDA and float32 on CPU.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    shape = LlamaShape.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    dev = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = getattr(torch, shape.torch_dtype, torch.float32) if dev.type == "cuda" else torch.float32
    with torch.device("meta"):
        model = LlamaModel(shape)
    model = model.to_empty(device=dev).to(dtype)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    fused_parts: dict[str, dict[int, torch.Tensor]] = {}
    for path in _safetensor_files(model_dir):
        with safe_open(str(path), framework="pt", device=str(dev)) as f:
            for name in f.keys():
                local = _hf_to_local(name)
                if local is None and name.startswith("model.layers."):
                    parts = name.split(".")
                    key = ".".join(parts[3:5])
                    if key in _FUSED:
                        target, idx = _FUSED[key]
                        full = f"blocks.{parts[2]}.{target}.{parts[5]}"
                        fused_parts.setdefault(full, {})[idx] = f.get_tensor(name)
                        continue
                if local is None or local not in params:
                    continue
                with torch.no_grad():
                    params[local].copy_(f.get_tensor(name))
                loaded.add(local)
    for full, pieces in fused_parts.items():
        with torch.no_grad():
            params[full].copy_(torch.cat([pieces[i] for i in sorted(pieces)], dim=0))
        loaded.add(full)
    missing = set(params) - loaded
    if missing:
        raise ValueError(f"{model_dir}: checkpoint lacks {sorted(missing)[:5]} ({len(missing)} tensors)")
    model.eval()
    model.prepare_rope(shape.max_position_embeddings + 1)
    return model
