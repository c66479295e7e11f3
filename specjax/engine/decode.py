"""The decode program: prefill, then lax.while_loop(propose -> verify -> accept -> commit), one jit.

The autoregressive baseline is this same program with `NoDrafter` (a one-node tree), so every
speedup compares like with like.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from specjax.cache import KVCache, put_rows
from specjax.engine import accept as accept_lib
from specjax.models.llama import causal_mask
from specjax.process_cache import CACHE
from specjax.protocol import Context, Drafter, Models, Prefill, Step


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spec:
  """Static configuration of one compiled program."""
  drafter: Drafter
  max_len: int                      # cache / token buffer length S (max_new_tokens is an argument)
  eos_ids: tuple[int, ...]
  acceptance: str = "greedy"
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  cache_sharding: object = None     # NamedSharding of the KV cache on a device mesh (program/sharded.py)
  state_placement: object = None    # pins the drafter state's entries on a mesh (program/sharded.StatePlacement)
  # Timing: run exactly max_new loop steps whatever the rows do (a finished row costs what a live one
  # does), so two runs give one step's cost (tree_budget="auto" measures its cost curve this way).
  timing: bool = False
  # Prefill timing: the program tells the host (a callback) when the prompts' keys are in the cache. JAX
  # never writes a program with a host callback to its persistent compilation cache, so this is opt-in.
  time_prefill: bool = False
  precision: str = "exact"          # numerics policy the program is traced under (specjax/numerics.py)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Result:
  """tokens [B, S]: prompt then generated tokens; prompt_len, new_tokens, forwards [B];
  accepted_hist [B, D+1]: how many steps accepted 0..D draft tokens; nan [B]: a row's logits held a NaN."""
  tokens: jax.Array
  prompt_len: jax.Array
  new_tokens: jax.Array
  forwards: jax.Array
  accepted_hist: jax.Array
  nan: jax.Array


def _accept(spec: Spec, logits, tree, key):
  if spec.acceptance == "greedy" or spec.temperature == 0.0:
    return accept_lib.greedy(logits, tree)
  rule = accept_lib.sample if spec.acceptance == "sample" else accept_lib.typical
  return rule(logits, tree, key, temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p)


def _constrain(cache: KVCache, sharding) -> KVCache:
  """Pins the cache's layout on a mesh (batch over "data", KV heads over "model"), so the loop carry never
  drifts to another layout; a no-op on one device."""
  if sharding is None:
    return cache
  pin = lambda x: jax.lax.with_sharding_constraint(x, sharding)
  return dataclasses.replace(cache, k=tuple(map(pin, cache.k)), v=tuple(map(pin, cache.v)))


DRAFT_STREAM = 0x5EED   # fold_in constant of the drafters' random stream


def _stamp_prefill(_):
  CACHE.prefill_done.append(time.perf_counter())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoopState:
  """The while_loop carry. new, forwards [B]: tokens generated and target forwards so far;
  hist [B, D+1]: steps that accepted 0..D candidates; nan [B]: a row's logits held a NaN; steps []: loop steps run."""
  cache: KVCache
  ctx: Context
  dstate: object
  key: jax.Array
  new: jax.Array
  forwards: jax.Array
  hist: jax.Array
  nan: jax.Array
  steps: jax.Array


def _verify(model, tree, positions, cache, skip_empty: bool, capture):
  """One target forward over the tree. When no row has a candidate (every non-root parent is -1)
  and the drafter allows it, a one-token forward runs instead (lax.cond: both live in the program),
  so a drafter with nothing to propose costs what autoregressive decoding costs."""
  full = lambda: model(tree.tokens, positions, cache, tree.mask, capture=capture)
  T = tree.tokens.shape[1]
  if not skip_empty or T == 1:
    return full()

  def root_only():
    o = model(tree.tokens[:, :1], positions[:, :1], cache, tree.mask[:, :1, :1], capture=capture)
    pad = lambda x, axis: jnp.pad(x, [(0, T - 1) if a == axis else (0, 0) for a in range(x.ndim)])
    return dataclasses.replace(o, logits=pad(o.logits, 1), hidden=pad(o.hidden, 1), k=pad(o.k, 2), v=pad(o.v, 2),
                               layer_hidden={i: pad(h, 1) for i, h in o.layer_hidden.items()})

  return jax.lax.cond(jnp.any(tree.parent[:, 1:] >= 0), full, root_only)


def run(graphdef, params, drafter_params, prompt, prompt_len, max_new, key, *, spec: Spec) -> Result:
  """prompt [B, P] int32 right-padded, prompt_len [B] >= 1, max_new [] int32 new tokens per row
  (traced: any budget that fits the buffer reuses the program). Pure; jit with `spec` static.

  params: the target's NNX state; drafter_params: the drafter's (None for weightless drafters).
  Both are arguments, never constants: new weights reuse the compiled program."""
  CACHE.traces += 1
  model = nnx.merge(graphdef, params)
  drafter = spec.drafter
  m = Models(model, None if drafter.graphdef is None else nnx.merge(drafter.graphdef, drafter_params))
  cfg = model.cfg
  B, P = prompt.shape
  S = spec.max_len
  D = drafter.max_depth
  capture = tuple(drafter.capture)
  eos = jnp.asarray(spec.eos_ids, jnp.int32)

  # Prefill every prompt token but the last, which becomes the first tree's root.
  cache = KVCache.zeros(layers=cfg.layers, batch=B, max_len=S, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
  if P > 1:
    pre = model(prompt[:, :-1], jnp.broadcast_to(jnp.arange(P - 1), (B, P - 1)), None, causal_mask(B, P - 1),
                capture=capture)
    cache = cache.write(pre.k, pre.v)
    prefill = Prefill(pre.hidden, pre.layer_hidden)
  else:
    z = jnp.zeros((B, 1, cfg.hidden), jnp.float32)
    prefill = Prefill(z, {i: z for i in capture})
  cache = _constrain(dataclasses.replace(cache, lengths=prompt_len - 1), spec.cache_sharding)
  if spec.time_prefill:    # one host callback per call, outside the loop; it waits only for its operand
    jax.debug.callback(_stamp_prefill, cache.k[0][0, 0, 0, 0])
  tokens = jnp.zeros((B, S), jnp.int32).at[:, :P].set(prompt)
  ctx = Context(tokens, prompt_len - 1, prompt_len, jnp.zeros(B, bool))
  zeros = jnp.zeros(B, jnp.int32)
  place = spec.state_placement or (lambda s: s)
  carry = LoopState(cache, ctx, place(drafter.init(m, ctx, prefill)), key, zeros, zeros,
                    jnp.zeros((B, D + 1), jnp.int32), jnp.zeros(B, bool), jnp.zeros((), jnp.int32))

  def body(c: LoopState) -> LoopState:
    cache, ctx = c.cache, c.ctx
    key, k_acc = jax.random.split(c.key)
    # The draft's key: folded from this step's key with a constant no split of it produces.
    tree, dstate = drafter.propose(m, c.dstate, dataclasses.replace(ctx, key=jax.random.fold_in(c.key, DRAFT_STREAM)))
    out = _verify(model, tree, ctx.root[:, None] + tree.depth, cache, drafter.skip_empty_trees, capture)
    acc = _accept(spec, out.logits, tree, k_acc)

    # Tokens this step adds: accepted candidates then the bonus, cut at EOS and at the budget.
    cand = jnp.take_along_axis(tree.tokens, acc.path[:, 1:], 1)                    # [B, D]
    idx = jnp.arange(D + 1)[None, :]
    new = jnp.where(idx == acc.n[:, None], acc.bonus[:, None], jnp.pad(cand, ((0, 0), (0, 1))))
    is_eos = jnp.isin(new, eos) & (idx <= acc.n[:, None])
    count = jnp.where(jnp.any(is_eos, 1), jnp.argmax(is_eos, 1) + 1, acc.n + 1)
    count = jnp.minimum(count, max_new - c.new)
    count = jnp.where(ctx.done, 0, count)
    hit_eos = jnp.any(is_eos & (idx < count[:, None]), 1)

    cache = _constrain(cache.write(out.k, out.v, rows=acc.path).advance(count), spec.cache_sharding)
    new_tokens = c.new + count
    ctx = Context(put_rows(ctx.tokens, new, ctx.root + 1), ctx.root + count, ctx.prompt_len,
                  ctx.done | hit_eos | (new_tokens >= max_new))
    live = ~c.ctx.done
    step = Step(tree, out.logits, out.hidden, out.layer_hidden, acc, count)
    return LoopState(cache, ctx, place(drafter.update(m, dstate, ctx, step)), key, new_tokens, c.forwards + live,
                     c.hist + (live[:, None] & (jnp.arange(D + 1)[None] == acc.n[:, None])),
                     c.nan | (live & jnp.any(jnp.isnan(out.logits), axis=(1, 2))), c.steps + 1)

  more = (lambda c: c.steps < max_new) if spec.timing else (lambda c: ~jnp.all(c.ctx.done))
  c = jax.lax.while_loop(more, body, carry)
  return Result(c.ctx.tokens, prompt_len, c.new, c.forwards, c.hist, c.nan)
