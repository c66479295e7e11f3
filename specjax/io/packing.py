"""Packing per-projection checkpoint tensors into the model's fused layouts: the one place both loaders
(GGUF and Hugging Face) write wqkv / bqkv / w_gate_up.

    wqkv      [L, H, K, G+2, D]   per KV head k: its G query heads, then its key, then its value
    bqkv      [L, K, G+2, D]
    w_gate_up [L, H, 2, F]        gate, then up

(N query heads, K KV heads, G = N/K, head dim D, FFN width F.) Query head n = k*G + g reads KV head
k = n // G, as in Hugging Face's GQA. The head axis K and the FFN axis F are separate array axes, so a
split over the "model" mesh axis keeps each KV group's q/k/v together and each gate column with its up
column; on one device each is still one matmul (a dot_general over H with contiguous output axes).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from specjax.models.config import ModelConfig

QKV = ("q", "k", "v")


def put_qkv(out: dict, cfg: ModelConfig, layer: int, part: str, w: np.ndarray):
  """w: the checkpoint's q/k/v projection of one layer in [in, out] order, [H, n*D] (n = N for "q", K
  otherwise); or its bias [n*D] (written to bqkv)."""
  K, G, D = cfg.kv_heads, cfg.heads // cfg.kv_heads, cfg.head_dim
  bias = w.ndim == 1
  dst = out["bqkv"][layer] if bias else out["wqkv"][layer]          # [K, G+2, D] or [H, K, G+2, D]
  lead = () if bias else (w.shape[0],)
  if part == "q":
    dst[..., :G, :] = w.reshape(*lead, K, G, D)
  else:
    dst[..., G + QKV.index(part) - 1, :] = w.reshape(*lead, K, D)


def put_gate_up(out: dict, layer: int, part: str, w: np.ndarray):
  """w: one layer's gate or up projection in [in, out] order, [H, F]."""
  out["w_gate_up"][layer, :, ("gate", "up").index(part), :] = w


def flat_layout(name: str, x, cfg: ModelConfig):
  """A packed weight in the flat layout it had before the head / gate-up axes existed (wqkv [L, H, (N+2K)D]:
  all q columns, then k, then v; w_gate_up [L, H, 2F]; bqkv [L, (N+2K)D]); other weights unchanged. The
  target fingerprint that drafter checkpoints record is taken over this layout, so it did not change.
  x: a numpy or JAX array."""
  if name == "w_gate_up":
    return x.reshape(*x.shape[:-2], -1)
  if name not in ("wqkv", "bqkv"):
    return x
  G = cfg.heads // cfg.kv_heads
  lead = x.shape[:-3]
  q, k, v = x[..., :G, :], x[..., G, :], x[..., G + 1, :]
  return jnp.concatenate([q.reshape(*lead, -1), k.reshape(*lead, -1), v.reshape(*lead, -1)], axis=-1)
