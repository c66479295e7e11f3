"""Shared bits of the benchmark programs: the command line and result file, the machine, timing, the target's
forward over T new tokens, and a drafter's cost per decode step."""
import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np


def parser(doc: str, out: str, target: bool = True) -> argparse.ArgumentParser:
  """An argument parser with --out (the result file) and, with target, --model and --dtype."""
  ap = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
  ap.add_argument("--out", default=out, help="result file (JSON)")
  if target:
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="float32")
  return ap


def save(path, res: dict) -> pathlib.Path:
  """Writes res as JSON after the machine and the command line, creating the folder."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(dict(machine=machine(), command=" ".join(["python"] + sys.argv), **res), indent=1))
  print("wrote", path, flush=True)
  return path


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
              python=platform.python_version(), loadavg=os.getloadavg())


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


def median_ms(fn, *args, reps=20):
  """Median wall time of fn(*args) in ms, after one call that compiles it."""
  import jax
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(reps):
    s = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - s)
  return 1e3 * float(np.median(ts))


def best_ms(fn, *args, rounds=5, calls=3):
  """The best over `rounds` of the mean wall time of `calls` back-to-back calls of fn(*args), in ms, after one
  call that compiles it (less sensitive than a median to a busy neighbour on a shared machine)."""
  import jax
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(rounds):
    s = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(fn(*args))
    best = min(best, (time.perf_counter() - s) / calls)
  return 1e3 * best


def forward_fn(t):
  """(forward, params): the target's jitted forward, forward(params, tokens, positions, cache, mask) -> logits
  [B, T, V], the program a verify (or, at T = 1, a plain decode step) runs."""
  import jax
  from flax import nnx
  gd, params = nnx.split(t.model)
  return jax.jit(lambda p, tok, pos, c, m: nnx.merge(gd, p)(tok, pos, c, m).logits), params


def forward_args(t, *, B: int, T: int, context: int, buffer: int | None = None):
  """(tokens [B, T], positions [B, T], cache, mask [B, T, T]) for T new tokens after `context` cached ones, in a
  float32 cache buffer (as decoding's) of `buffer` positions (default context + 64)."""
  import jax.numpy as jnp
  from specjax.cache import KVCache
  cfg = t.cfg
  cache = KVCache.zeros(layers=cfg.layers, batch=B, max_len=buffer or context + 64, kv_heads=cfg.kv_heads,
                        head_dim=cfg.head_dim).advance(jnp.full((B,), context))
  pos = jnp.broadcast_to(context + jnp.arange(T), (B, T))
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
  return jnp.zeros((B, T), jnp.int32), pos, cache, mask


def verify_ms(t, T, ctx=256):
  """One target forward over T new tokens at batch 1 with `ctx` cached tokens (ms, median)."""
  fwd, params = forward_fn(t)
  return median_ms(fwd, params, *forward_args(t, B=1, T=T, context=ctx), reps=10)


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
  # Logits too: some drafters' update reads them (Cerberus's gate entropy).
  step = Step(None, jnp.zeros((1, T, t.cfg.vocab), jnp.float32), jnp.ones((1, T, H), jnp.float32), {i: jnp.ones((1, T, H), jnp.float32) for i in d.capture},
              Acceptance(jnp.arange(D + 1)[None].astype(jnp.int32), jnp.full((1,), D, jnp.int32), jnp.zeros(1, jnp.int32)),
              jnp.full((1,), D + 1, jnp.int32))
  c2 = Context(tokens, jnp.full((1,), ctx + D + 1), c.prompt_len, c.done)

  def update(tp, dp, state):
    return d.update(models(tp, dp), state, c2, step)

  state = jax.jit(init)(params, d.params)
  return median_ms(jax.jit(propose), params, d.params, state), median_ms(jax.jit(update), params, d.params, state)


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
