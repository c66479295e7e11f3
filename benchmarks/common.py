"""Shared bits of the benchmark scripts: machine description and memory-bandwidth probe."""
import os
import platform
import time

import numpy as np


def machine() -> dict:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return dict(cpu=cpu, cores=os.cpu_count(), jax=jax.__version__, devices=[str(d) for d in jax.devices()],
              python=platform.python_version())


def read_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
  """Best-of sustained read bandwidth: sum a large float32 array (numpy, all cores via no threads;
  numpy's sum is single threaded, so this is a per-core-ish lower bound)."""
  a = np.ones(mb * 2**20 // 4, np.float32)
  best = 0.0
  for _ in range(repeats):
    t = time.perf_counter()
    a.sum()
    best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
  return best


def best_ms(fn, *args, reps=20):
  """Median wall time of fn(*args) in ms, after one call that compiles it."""
  import jax
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(reps):
    s = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - s)
  return 1e3 * float(np.median(ts))


def verify_ms(t, T, ctx=256):
  """One target forward over T new tokens at batch 1 with `ctx` cached tokens (ms)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from specjax.cache import KVCache
  gd, params = nnx.split(t.model)
  cfg = t.cfg
  fwd = jax.jit(lambda p, tok, pos, c, m: nnx.merge(gd, p)(tok, pos, c, m).logits)
  cache = KVCache.zeros(layers=cfg.layers, batch=1, max_len=ctx + 64, kv_heads=cfg.kv_heads,
                        head_dim=cfg.head_dim).advance(jnp.full((1,), ctx))
  tok = jnp.zeros((1, T), jnp.int32)
  pos = ctx + jnp.arange(T)[None]
  mask = jnp.tril(jnp.ones((T, T), bool))[None]
  return best_ms(fwd, params, tok, pos, cache, mask, reps=10)
