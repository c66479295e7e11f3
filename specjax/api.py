"""Public entry points: `generate` (autoregressive or speculative) over a loaded target."""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import budget as budget_lib
from specjax import numerics
from specjax.drafters import registry
from specjax.engine import accept as accept_lib
from specjax.engine import decode
from specjax.io import Target
from specjax.io.prompts import check_text
from specjax.models.llama import causal_mask
from specjax.parallel import program as sharded

_BUCKET = 64   # prompt lengths are padded to a multiple of this, so similar prompts share one compile


@dataclasses.dataclass
class Generation:
  """texts[i], token_ids[i]: the i-th prompt's answer. Per row: new_tokens, target_forwards, tau,
  accepted_hist (steps that accepted 0..D draft tokens). Whole call: wall_s (run, excluding
  compilation and, with tree_budget="auto", its step-cost measurements), compile_s, tokens_per_s (all
  rows' new tokens / wall_s); with time_prefill=True, prefill_s: the part of wall_s spent before the
  first decode step (the prompts' forward: time to first token less one step) and decode_tokens_per_s:
  new tokens / (wall_s - prefill_s), else None; budget: the tree budget run ("nodes=4"; "none" when auto chose no
  speculation, then drafter is "none"), with budget_ms the measured step costs auto compared; precision:
  the numerics policy, "exact" or "fast" (specjax/numerics.py)."""
  texts: list[str]
  token_ids: list[list[int]]
  new_tokens: list[int]
  target_forwards: list[int]
  tau: list[float]
  accepted_hist: list[list[int]]
  wall_s: float
  compile_s: float
  tokens_per_s: float
  drafter: str
  acceptance: str
  lossless: bool
  budget: str = ""
  budget_ms: dict = dataclasses.field(default_factory=dict)
  prefill_s: float | None = None
  decode_tokens_per_s: float | None = None
  precision: str = "exact"     # the numerics policy it ran under (specjax/numerics.py)


def _round_up(n, m):
  return -(-n // m) * m


# Below this, float32 logits / temperature overflow XLA's softmax (NaN probabilities) and sampling
# silently returns garbage; 0 is greedy.
MIN_TEMPERATURE = 1e-4
SEED_LIMIT = 2 ** 32     # jax.random.key keeps 32 bits of a seed (without x64): larger seeds alias smaller ones


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_finite(v) -> bool:
  """A real number (not a bool) of a size a float holds: no NaN, no infinity, no 400-digit integer."""
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and abs(v) < 1e300


def check_sampling(temperature=0.0, top_k=None, top_p=None, acceptance=None):
  """Validates the sampling settings without a model (the CLI calls it before loading one). Returns
  (temperature, top_k, top_p, acceptance) as float, int | None, float | None, rule name."""
  if not _is_finite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
  if 0 < temperature < MIN_TEMPERATURE:
    raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature!r}")
  if top_k is not None and (not _is_int(top_k) or top_k < 1):
    raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
  if top_p is not None and (not _is_finite(top_p) or not 0 < top_p <= 1):
    raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
  if acceptance is None:
    acceptance = "greedy" if temperature == 0 else "sample"
  if acceptance not in accept_lib.RULES:
    raise ValueError(f"unknown acceptance {acceptance!r}; choose from {', '.join(accept_lib.RULES)}")
  if acceptance != "greedy" and temperature == 0:
    acceptance = "greedy"
  if acceptance == "greedy" and temperature > 0:
    raise ValueError("acceptance='greedy' needs temperature=0; use 'sample' for temperature > 0")
  return (float(temperature), None if top_k is None else int(top_k), None if top_p is None else float(top_p),
          acceptance)


def check_seed(seed) -> int:
  if not _is_int(seed) or not 0 <= seed < SEED_LIMIT:
    raise ValueError(f"seed must be an integer in [0, {SEED_LIMIT - 1}], got {seed!r}")
  return int(seed)


def _prompt_list(prompts) -> list:
  """The forms users pass -> a list of prompts, each a string or a sequence of token ids: a string; a
  list of strings and/or token-id lists; one flat list of token ids; a 1-D [L] or 2-D [B, L] integer
  array (B prompts of L ids); a 1-D array of strings."""
  if isinstance(prompts, str):
    return [prompts]
  if hasattr(prompts, "__array__") and hasattr(prompts, "ndim"):      # numpy or JAX array
    a = np.asarray(prompts)
    if a.dtype.kind in "iu" and a.ndim in (1, 2):
      return [a.tolist()] if a.ndim == 1 else a.tolist()
    if a.dtype.kind in "UO" and a.ndim == 1:
      return a.tolist()
    raise ValueError(f"a prompt array must hold token ids ([L] or [B, L] integers) or strings ([B]); got "
                     f"{a.dtype} of shape {a.shape}")
  if not isinstance(prompts, (list, tuple)):
    raise ValueError("prompts must be a string, a list of strings or of token-id lists, a list of token ids, "
                     f"or an integer array; got {type(prompts).__name__}")
  if prompts and all(_is_int(t) for t in prompts):
    return [list(prompts)]              # one prompt given as a flat list of token ids
  return list(prompts)


def check_target(target) -> Target:
  """TypeError naming the argument unless `target` is a loaded model (an AttributeError deep inside otherwise)."""
  if not isinstance(target, Target):
    raise TypeError(f"target must be a loaded model, specjax.load(...) (a specjax.Target), got "
                    f"{type(target).__name__} {target!r:.60}")
  return target


def encode_prompts(target: Target, prompts, chat: bool, allow_special: bool = False) -> list[list[int]]:
  """Token ids of each prompt. Strings get the chat template when `chat`; special-token text typed in
  them (e.g. "<|im_end|>") is encoded as plain text unless allow_special (see Tokenizer.encode_chat)."""
  check_target(target)
  if not isinstance(chat, bool) or not isinstance(allow_special, bool):
    raise ValueError(f"chat and allow_special must be True or False, got {chat!r}, {allow_special!r}")
  prompts = _prompt_list(prompts)
  if not prompts:
    raise ValueError("no prompts given")
  out = []
  for i, p in enumerate(prompts):
    if isinstance(p, str):
      if not p.strip():
        raise ValueError("empty prompt: every prompt needs some text")
      check_text(p, f"prompt {i}")
      tok = target.tokenizer
      if chat:
        ids = tok.encode_chat([{"role": "user", "content": p}], allow_special=allow_special)
      else:
        ids = tok.encode(p, allow_special=allow_special)
    elif isinstance(p, (list, tuple, np.ndarray)) and all(_is_int(t) for t in p):
      ids = [int(t) for t in p]          # already token ids
    else:
      raise ValueError(f"prompt {i} must be a string or a list of integer token ids, got "
                       f"{type(p).__name__}{'' if not isinstance(p, (list, tuple)) else ' holding ' + _kinds(p)}")
    if not ids:
      raise ValueError("empty prompt: it encodes to no tokens")
    bad = [t for t in ids if not 0 <= t < target.cfg.vocab]
    if bad:
      raise ValueError(f"token ids out of the vocabulary (0..{target.cfg.vocab - 1}): {bad[:5]}")
    out.append(ids)
  return out


def _kinds(seq) -> str:
  return ", ".join(sorted({type(t).__name__ for t in seq}))


def check_fits(target: Target, prompt_tokens: int, max_new_tokens: int, drafter) -> None:
  """ValueError unless a prompt of `prompt_tokens` tokens, max_new_tokens and the draft depth fit the context."""
  ctx = target.cfg.max_context
  if prompt_tokens >= ctx:
    raise ValueError(f"prompt of {prompt_tokens} tokens does not fit the model's context of {ctx} tokens")
  room = prompt_tokens + max_new_tokens + drafter.max_depth + 1
  if room > ctx:
    most = ctx - prompt_tokens - drafter.max_depth - 1
    fix = (f"lower max_new_tokens to at most {most}" if most >= 1 else
           "no max_new_tokens fits: shorten the prompt or use a shallower draft (e.g. fewer num_tokens)")
    raise ValueError(f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) + draft depth "
                     f"({drafter.max_depth}) + 1 = {room} overflows the model's context of {ctx} tokens; {fix}")


def prepare(target: Target, prompt_ids: list[list[int]], *, max_new_tokens: int, drafter, temperature=0.0,
            top_k=None, top_p=None, acceptance=None, precision="exact", **drafter_options):
  """Validates everything and returns (spec, device inputs) for the compiled `decode.run`."""
  check_target(target)
  if not _is_int(max_new_tokens) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  temperature, top_k, top_p, acceptance = check_sampling(temperature, top_k, top_p, acceptance)
  d = registry.make(drafter, **drafter_options)
  d.check_target(target)
  longest = max(len(p) for p in prompt_ids)
  check_fits(target, longest, max_new_tokens, d)
  P = _round_up(longest, _BUCKET)
  S = _round_up(P + max_new_tokens + d.max_depth + 2, _BUCKET)
  # The static configuration never holds weights: they travel as a program argument (`drafter_params`).
  spec = decode.Spec(drafter=dataclasses.replace(d, params=None), max_len=S,
                     eos_ids=tuple(target.tokenizer.eos_ids), acceptance=acceptance, temperature=float(temperature),
                     top_k=top_k, top_p=top_p, precision=numerics.check(precision))
  prompt = np.zeros((len(prompt_ids), P), np.int32)
  for i, p in enumerate(prompt_ids):
    prompt[i, :len(p)] = p
  lens = np.array([len(p) for p in prompt_ids], np.int32)
  return spec, d.params, (jnp.asarray(prompt), jnp.asarray(lens), jnp.asarray(max_new_tokens, jnp.int32))


_EXECUTABLES: dict = {}


def _executable(graphdef, spec, params, dparams, inputs, key, lay=None):
  """Compiled program for these static settings and input shapes, compiled at most once. Weights
  (target and drafter) and the token budget are arguments: only shapes and dtypes enter the key, and
  the mesh layout (lay: specjax.parallel.rules.Layout, None on one device) with its shardings."""
  shapes = lambda tree: tuple((x.shape, x.dtype) for x in jax.tree.leaves(tree))
  sig = (graphdef, spec, shapes(inputs), shapes(params), shapes(dparams), lay)
  if sig not in _EXECUTABLES:
    if len(_EXECUTABLES) >= 16:
      _EXECUTABLES.pop(next(iter(_EXECUTABLES)))
    _compilation_cache()
    _EXECUTABLES[sig] = _lower(graphdef, spec, params, dparams, inputs, key, lay).compile()
  return _EXECUTABLES[sig]


def _lower(graphdef, spec, params, dparams, inputs, key, lay=None) -> jax.stages.Lowered:
  """The decode program traced and lowered under the spec's numerics policy."""
  run = functools.partial(decode.run, graphdef, spec=spec)
  if lay is None:
    program = jax.jit(run)
  else:
    program = jax.jit(run, in_shardings=sharded.in_shardings(lay, params, dparams),
                      out_shardings=sharded.out_shardings(lay))
  with numerics.scope(spec.precision):
    return program.lower(params, dparams, *inputs, key)


def lower(target: Target, prompt_ids: list[list[int]], *, max_new_tokens: int = 8, drafter="none",
          precision: str | None = None, **options) -> jax.stages.Lowered:
  """The one-device decode program for these prompts (token ids) and settings, lowered but not compiled:
  `.as_text()` shows every dot's numerics (tests/test_numerics.py). options: sampling and drafter options."""
  precision = target.precision if precision is None else precision
  spec, dparams, inputs = prepare(target, prompt_ids, max_new_tokens=max_new_tokens, drafter=drafter,
                                  precision=precision, **options)
  graphdef, params = nnx.split(target.model)
  return _lower(graphdef, spec, params, dparams, inputs, jax.random.key(0))


@functools.cache
def _compilation_cache():
  """JAX's persistent compilation cache in a user cache directory, so a new process (the CLI, a
  notebook restart) loads compiled programs instead of compiling them again. Off with
  SPECJAX_COMPILATION_CACHE=0; a cache directory the user configured is left alone."""
  import os
  import pathlib
  setting = os.environ.get("SPECJAX_COMPILATION_CACHE", "1")
  if setting.lower() in ("0", "off", "false", "no") or jax.config.jax_compilation_cache_dir:
    return
  path = setting if setting not in ("1", "on", "true", "yes") else str(
      pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "specjax" / "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", 2 * 1024**3)     # bytes; least recently used go first


def check_tree_budget(tree_budget):
  if tree_budget not in (None, "fixed", "auto"):
    raise ValueError(f"tree_budget must be 'auto' or 'fixed' (the drafter's own options), got {tree_budget!r}")
  return tree_budget or "fixed"


def generate(target: Target, prompts, *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, chat: bool = True,
             drafter="none", acceptance: str | None = None, allow_special: bool = False, mesh=None,
             tree_budget: str | None = None, time_prefill: bool = False, precision: str | None = None,
             **drafter_options) -> Generation:
  """Generates for a batch of prompts (strings, or lists of token ids) in one compiled program.

  drafter: "none" (autoregressive), "pld", "lookahead", "medusa" (the shipped checkpoint),
  "medusa:PATH" (your checkpoint), or a Drafter instance (with its `params` for a trained one);
  drafter_options are passed to it (e.g. num_tokens=4). acceptance: "greedy" (temperature 0), "sample"
  (lossless), or "typical" (lossy, opt-in). Temperature 0 is greedy. allow_special: encode
  special-token text in the prompts (e.g. "<|im_end|>") as the special tokens; by default it is plain text.
  mesh: a device mesh (specjax.make_mesh) to run sharded over; default: the one the target was loaded
  on (specjax.load(..., mesh=...)), else one device. Outputs equal the one-device outputs.
  tree_budget: "fixed" (default: the drafter's options) or "auto": the budget with the most tokens per
  second at this batch size (specjax/budget.py), possibly no speculation; the tokens are the same.
  time_prefill: also report the prefill's time (Generation.prefill_s) and decoding's own tokens/s. The
  program then calls back to the host once, which keeps it out of JAX's persistent compilation cache
  (a new process compiles it again).
  precision: "exact" or "fast" (specjax/numerics.py); default: the one the target was loaded with.
  """
  seed = check_seed(seed)
  tree_budget = check_tree_budget(tree_budget)
  if not isinstance(time_prefill, bool):
    raise ValueError(f"time_prefill must be True or False, got {time_prefill!r}")
  ids = encode_prompts(target, prompts, chat, allow_special)       # checks the target first
  precision = numerics.check(target.precision if precision is None else precision)
  if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"mesh must be a device mesh from specjax.make_mesh(...), got {type(mesh).__name__}")
  mesh = target.mesh if mesh is None else mesh
  rows = len(ids)
  if mesh is not None:       # the batch splits evenly over "data": pad with copies of the first prompt
    ids = ids + [ids[0]] * (-rows % mesh.shape["data"])
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, acceptance=acceptance, precision=precision)
  spec, dparams, inputs = prepare(target, ids, max_new_tokens=max_new_tokens, drafter=drafter, **sampling,
                                  **drafter_options)
  lay = None if mesh is None else sharded.layout(mesh, target.cfg)
  user = spec.drafter            # as configured: its fixed budget
  budget, budget_ms = _budget_label(user), {}
  if tree_budget == "auto":
    if lay is not None and any(d.process_index != jax.process_index() for d in mesh.devices.flat):
      # Each process would measure (and choose) on its own, and their programs must be the same one.
      raise ValueError("tree_budget='auto' on a mesh across processes is not supported yet; use a fixed budget "
                       "(a multi-host batch job, whose processes work apart, may use auto)")
    spec, dparams, inputs, budget, budget_ms = _auto_budget(target, ids, max_new_tokens, spec, dparams, sampling, lay)
  spec = dataclasses.replace(spec, time_prefill=time_prefill)
  res, wall, compile_s, prefill_s = _run(target, spec, dparams, inputs, jax.random.key(seed), lay)
  res = jax.tree.map(lambda x: x[:rows], res)
  _learn(target, user, budget, len(ids), res)
  if res.nan.any():
    rows = np.flatnonzero(res.nan).tolist()
    raise FloatingPointError(f"the target produced NaN logits (rows {rows}); its weights or dtype are broken "
                             "(check the checkpoint, or try dtype='float32')")
  texts, token_ids = [], []
  for i, p in enumerate(ids[:rows]):
    out = res.tokens[i, len(p):len(p) + int(res.new_tokens[i])].tolist()
    token_ids.append(out)
    texts.append(target.tokenizer.decode(out))
  new = [int(x) for x in res.new_tokens]
  fw = [int(x) for x in res.forwards]
  return Generation(texts=texts, token_ids=token_ids, new_tokens=new, target_forwards=fw,
                    tau=[n / max(f, 1) for n, f in zip(new, fw)], accepted_hist=res.accepted_hist.tolist(),
                    wall_s=wall, compile_s=compile_s, tokens_per_s=sum(new) / max(wall, 1e-9), prefill_s=prefill_s,
                    decode_tokens_per_s=None if prefill_s is None else sum(new) / max(wall - prefill_s, 1e-9),
                    drafter=spec.drafter.name, acceptance=spec.acceptance,
                    lossless=accept_lib.LOSSLESS[spec.acceptance], budget=budget, budget_ms=budget_ms,
                    precision=precision)


def _run(target: Target, spec, dparams, inputs, key, lay):
  """Compiles (at most once) and runs the program; returns (host Result, run seconds, compile seconds,
  prefill seconds: from the call to the prefill's end, as the program's host callback saw it, or None)."""
  graphdef, params = nnx.split(target.model)
  if lay is not None:
    spec = dataclasses.replace(spec, cache_sharding=sharded.cache_sharding(lay),
                               state_placement=sharded.state_placement(lay, spec.drafter))
    params, dparams, inputs, key = sharded.place(lay, params, dparams, inputs, key)
  t0 = time.perf_counter()
  fn = _executable(graphdef, spec, params, dparams, inputs, key, lay)
  decode.PREFILL_DONE.clear()
  t1 = time.perf_counter()
  res = fn(params, dparams, *inputs, key)
  res = sharded.gather(res) if lay is not None else jax.device_get(res)
  t2 = time.perf_counter()
  # A sharded program calls back once per device: the last one marks the end.
  prefill = max(decode.PREFILL_DONE) - t1 if spec.time_prefill and decode.PREFILL_DONE else None
  return res, t2 - t1, t1 - t0, prefill


def _learn(target: Target, user, label: str, batch: int, res):
  """Feeds tree_budget="auto" the batch tau this call achieved at budget `label` (budget.observe)."""
  if label == "none" or not user.budgets():
    return
  tau = {c.label: c.tau for c in budget_lib.candidates(user)}.get(label)
  if tau:
    budget_lib.observe((target.fingerprint, repr(user)), batch, tau, res.new_tokens.tolist(), res.forwards.tolist())


def _budget_label(d) -> str:
  return "none" if d.name == "none" else ",".join(f"{k}={getattr(d, k)}" for k in
                                                  dict.fromkeys(k for o, _ in d.budgets() for k in o)) or "fixed"


def _auto_budget(target: Target, ids, max_new_tokens, spec, dparams, sampling, lay, steps: int = 6, rounds: int = 3):
  """tree_budget="auto": (spec, dparams, inputs, budget label, {label: step ms}) of the budget that
  budget.choose picks from this drafter's candidates, each candidate's step cost measured here (at this
  batch size, buffer length and mesh) or read from budget.CostCache.

  A step's cost: the fastest of `rounds` runs of 1 + k loop steps minus the fastest of `rounds` runs of
  one step (prefill and dispatch cancel), over k; the candidates measured together take turns, so a
  burst of load elsewhere on the machine does not fall on one of them only."""
  from specjax.drafters.base import NoDrafter
  full = dataclasses.replace(spec.drafter, params=dparams)
  cache = budget_lib.CostCache()
  B = len(ids)
  machine = (budget_lib.machine_key(), target.fingerprint, str(np.dtype(target.model.dtype)),
             None if lay is None else dict(lay.mesh.shape))
  prepared = {}

  def measure(cands) -> dict:
    out, todo = {}, {}
    for c in cands:
      d = NoDrafter() if c.options is None else dataclasses.replace(full, **dict(c.options))
      try:
        prepared[c] = prepare(target, ids, max_new_tokens=max_new_tokens, drafter=d, **sampling)
      except ValueError:            # e.g. a deeper tree that overflows the context: never chosen
        out[c] = float("inf")
        continue
      cspec, cparams, _ = prepared[c]
      timing = dataclasses.replace(cspec, timing=True)
      k = max(1, min(steps, (cspec.max_len - 4) // (d.max_depth + 1) - 1))
      key = budget_lib.program_key(machine, repr(timing), B, k)
      if (ms := cache.get(key)) is not None:
        out[c] = ms
        continue
      # Prompts of two tokens in the real buffer length: a step's cost depends on the buffer, not on the
      # prompt, and the runs skip the real prompts' prefill; done rows cost what live ones do.
      args = (timing, cparams, (jnp.ones((B, 2), jnp.int32), jnp.full((B,), 2, jnp.int32)), lay)
      _timed(target, *args, 1)                                      # compiles
      todo[c] = (key, k, args, [], [])
    for _ in range(rounds):
      for key, k, args, one, more in todo.values():
        one.append(_timed(target, *args, 1))
        more.append(_timed(target, *args, 1 + k))
    for c, (key, k, args, one, more) in todo.items():
      out[c] = 1e3 * max(min(more) - min(one), 1e-6) / k
    cache.put({todo[c][0]: out[c] for c in todo})
    return out

  gain = budget_lib.observed_gain((target.fingerprint, repr(spec.drafter)), B)
  choice, ms = budget_lib.choose(budget_lib.candidates(full, gain), measure)
  spec, dparams, inputs = prepared[choice]
  return spec, dparams, inputs, "none" if choice.options is None else choice.label, ms


def _timed(target, spec, dparams, inputs, lay, n: int) -> float:
  """Seconds of one run of a timing program (spec.timing) for n loop steps."""
  return _run(target, spec, dparams, (*inputs, jnp.asarray(n, jnp.int32)), jax.random.key(0), lay)[1]


@functools.lru_cache(maxsize=8)
def _last_logits_fn(graphdef):
  def f(params, seq, n):
    model = nnx.merge(graphdef, params)
    B, T = seq.shape
    logits = model(seq, jnp.broadcast_to(jnp.arange(T), (B, T)), None, causal_mask(B, T)).logits
    return logits[0, n - 1]
  return jax.jit(f)


def next_token_gap(target: Target, ids: list[int]) -> float:
  """Top-1 minus top-2 logit of the target's next-token prediction after `ids` (one forward).

  Used to tell a greedy divergence at a near-tie (a gap within float rounding, where a T-node
  forward may legitimately round the other way) from a real mismatch (DESIGN, invariant 1)."""
  n = len(ids)
  seq = np.zeros((1, _round_up(n, _BUCKET)), np.int32)
  seq[0, :n] = ids
  graphdef, params = nnx.split(target.model)
  with numerics.scope(target.precision):      # as the baseline computed it
    logits = np.asarray(_last_logits_fn(graphdef)(params, jnp.asarray(seq), n))
  top2 = np.sort(logits)[-2:]
  return float(top2[1] - top2[0])


def first_diff(a: list[int], b: list[int]) -> int | None:
  """Index of the first differing token, or None when equal."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def divergence(target: Target, prompt_ids: list[int], base: list[int], got: list[int]) -> dict | None:
  """None when a greedy output `got` equals the autoregressive `base` (token ids after prompt_ids); else
  {"position": first differing index, "gap": the target's top-1 minus top-2 logit there, after
  prompt + base[:position]}. A gap within float rounding is a near-tie; a larger one is a bug."""
  d = first_diff(got, base)
  if d is None:
    return None
  return {"position": d, "gap": next_token_gap(target, list(prompt_ids) + list(base[:d]))}
