"""The numerics policy: every matmul in specjax states how it multiplies.

JAX's default for a float32 matmul is TF32 on recent NVIDIA GPUs and one bfloat16 pass on TPUs. A
T-token tree forward and a one-token forward then round differently, far beyond float32 rounding, and
every near-tie becomes a different token: on a GPU, outputs left plain decoding's with nothing pinned
(docs/MEASUREMENTS.md#pinned-numerics). The CPU computes float32 exactly, so only a test on
the lowered program sees it (tests/test_numerics.py).

Two policies:
- "exact" (the default): float32 operands multiply at Precision.HIGHEST (true float32); bfloat16 x
  bfloat16 (the split bfloat16 weights of models/llama.py `_proj`) use the BF16_BF16_F32 dot
  algorithm: exact products, float32 sums. Greedy speculative output equals autoregressive output up
  to summation order.
- "fast": the backend's default (TF32 / one bfloat16 pass). Faster on accelerators; outputs may differ
  from autoregressive decoding at near-ties. The user chooses it (`load`/`generate(precision="fast")`,
  `--precision fast`) and it is reported in `Generation.precision` and every bench result.

The policy is read at trace time from JAX's own `default_matmul_precision` setting, which `scope`
sets: it is part of every jit cache key, so a program traced under one policy is never reused under the
other. A user who sets JAX's matmul precision themselves gets what they set.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax import lax

POLICIES = ("exact", "fast")


def check(policy) -> str:
  if policy not in POLICIES:
    raise ValueError(f"precision must be one of {', '.join(POLICIES)}, got {policy!r}")
  return policy


def scope(policy: str):
  """The context a program is traced under: nothing for "exact" (each dot pins its own numerics),
  JAX's default precision for "fast"."""
  check(policy)
  return jax.default_matmul_precision("default") if policy == "fast" else contextlib.nullcontext()


def precision(*operands):
  """The `precision` argument for a dot of these operands under the policy being traced."""
  if jax.config.jax_default_matmul_precision is not None:      # "fast", or the user's own JAX setting
    return None
  if all(jnp.result_type(x) == jnp.bfloat16 for x in operands):
    return lax.DotAlgorithmPreset.BF16_BF16_F32
  return lax.Precision.HIGHEST


def einsum(eq: str, a, b, **kw):
  return jnp.einsum(eq, a, b, precision=precision(a, b), **kw)


def dot(a, b, **kw):
  return jnp.dot(a, b, precision=precision(a, b), **kw)


def dot_general(a, b, dims, **kw):
  return lax.dot_general(a, b, dims, precision=precision(a, b), **kw)
