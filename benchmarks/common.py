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
  """Best-of sustained read bandwidth with every core reading: a large float32 array summed in one
  chunk per core, in threads (numpy releases the GIL in reductions of large arrays)."""
  from concurrent.futures import ThreadPoolExecutor
  a = np.ones(mb * 2**20 // 4, np.float32)
  chunks = np.array_split(a, os.cpu_count() or 1)
  best = 0.0
  with ThreadPoolExecutor(len(chunks)) as pool:
    for _ in range(repeats):
      t = time.perf_counter()
      list(pool.map(np.sum, chunks))
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


def draft_ms(t, d, ctx=256, S=512):
  """(propose ms, update ms) of drafter d at batch 1 with `ctx` committed tokens (weights do not change
  the cost, only the shapes do)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from specjax.protocol import Acceptance, Context, Models, Prefill, Step
  gd, params = nnx.split(t.model)
  H = t.cfg.hidden
  tokens = jnp.ones((1, S), jnp.int32)
  c = Context(tokens, jnp.full((1,), ctx), jnp.full((1,), ctx - 100), jnp.zeros(1, bool))
  pre = Prefill(jnp.ones((1, ctx - 1, H), jnp.float32), {i: jnp.ones((1, ctx - 1, H), jnp.float32) for i in d.capture})

  def models(tp, dp):
    return Models(nnx.merge(gd, tp), None if d.graphdef is None else nnx.merge(d.graphdef, dp))

  def init(tp, dp):
    return d.init(models(tp, dp), c, pre)

  def propose(tp, dp, state):
    return d.propose(models(tp, dp), state, c)[0].tokens

  D = d.max_depth
  T = d.num_nodes
  step = Step(None, None, jnp.ones((1, T, H), jnp.float32), {i: jnp.ones((1, T, H), jnp.float32) for i in d.capture},
              Acceptance(jnp.arange(D + 1)[None].astype(jnp.int32), jnp.full((1,), D, jnp.int32), jnp.zeros(1, jnp.int32)),
              jnp.full((1,), D + 1, jnp.int32))
  c2 = Context(tokens, jnp.full((1,), ctx + D + 1), c.prompt_len, c.done)

  def update(tp, dp, state):
    return d.update(models(tp, dp), state, c2, step)

  state = jax.jit(init)(params, d.params)
  return best_ms(jax.jit(propose), params, d.params, state), best_ms(jax.jit(update), params, d.params, state)


def cost_row(t, d, drafter: str, budget: str, tau, ar: float, verify: dict) -> dict:
  """One row of a drafter-cost table for drafter `d` (budget label `budget`, held-out tau or None):
  propose / update / verify ms, the draft's share of a step and the estimated speedup over the
  autoregressive step `ar`. verify: {tree size: ms}, filled as needed."""
  T = d.num_nodes
  if T not in verify:
    verify[T] = verify_ms(t, T)
  prop, upd = draft_ms(t, d)
  row = {"drafter": drafter, "budget": budget, "T": T, "propose_ms": prop, "update_ms": upd, "verify_ms": verify[T],
         "ar_step_ms": ar, "tau_heldout": tau, "draft_share": (prop + upd) / (prop + upd + verify[T])}
  if tau:
    row["est_speedup"] = tau * ar / (prop + upd + verify[T])
  return row
