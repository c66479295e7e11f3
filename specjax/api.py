"""Public entry points: `generate` (autoregressive or speculative) over a loaded target."""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax.drafters import registry
from specjax.engine import accept as accept_lib
from specjax.engine import decode
from specjax.io import Target
from specjax.models.llama import causal_mask

_BUCKET = 64   # prompt lengths are padded to a multiple of this, so similar prompts share one compile


@dataclasses.dataclass
class Generation:
  """texts[i], token_ids[i]: the i-th prompt's answer. Per row: new_tokens, target_forwards, tau,
  accepted_hist (steps that accepted 0..D draft tokens). Whole call: wall_s (run, excluding
  compilation), compile_s, tokens_per_s (all rows' new tokens / wall_s)."""
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


def _round_up(n, m):
  return -(-n // m) * m


def encode_prompts(target: Target, prompts, chat: bool) -> list[list[int]]:
  if isinstance(prompts, str):
    prompts = [prompts]
  if not prompts:
    raise ValueError("no prompts given")
  out = []
  for p in prompts:
    if isinstance(p, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in p):
      ids = [int(t) for t in p]          # already token ids
    else:
      if not isinstance(p, str) or not p.strip():
        raise ValueError("empty prompt: every prompt needs some text")
      text = target.tokenizer.render_chat([{"role": "user", "content": p}]) if chat else p
      ids = target.tokenizer.encode(text)
    if not ids:
      raise ValueError("empty prompt: it encodes to no tokens")
    bad = [t for t in ids if not 0 <= t < target.cfg.vocab]
    if bad:
      raise ValueError(f"token ids out of the vocabulary (0..{target.cfg.vocab - 1}): {bad[:5]}")
    out.append(ids)
  return out


def prepare(target: Target, prompt_ids: list[list[int]], *, max_new_tokens: int, drafter, temperature=0.0,
            top_k=None, top_p=None, acceptance=None, **drafter_options):
  """Validates everything and returns (spec, device inputs) for the compiled `decode.run`."""
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if acceptance is None:
    acceptance = "greedy" if temperature == 0 else "sample"
  if acceptance not in accept_lib.RULES:
    raise ValueError(f"unknown acceptance {acceptance!r}; choose from {', '.join(accept_lib.RULES)}")
  if acceptance != "greedy" and temperature == 0:
    acceptance = "greedy"
  if acceptance == "greedy" and temperature > 0:
    raise ValueError("acceptance='greedy' needs temperature=0; use 'sample' for temperature > 0")
  d = registry.make(drafter, **drafter_options)
  d.check_target(target)
  ctx = target.cfg.max_context
  longest = max(len(p) for p in prompt_ids)
  if longest >= ctx:
    raise ValueError(f"prompt of {longest} tokens does not fit the model's context of {ctx} tokens")
  room = longest + max_new_tokens + d.max_depth + 1
  if room > ctx:
    raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) + draft depth "
                     f"({d.max_depth}) + 1 = {room} overflows the model's context of {ctx} tokens; "
                     f"lower max_new_tokens to at most {ctx - longest - d.max_depth - 1}")
  P = _round_up(longest, _BUCKET)
  S = _round_up(P + max_new_tokens + d.max_depth + 2, _BUCKET)
  # The static configuration never holds weights: they travel as a program argument (`drafter_params`).
  spec = decode.Spec(drafter=dataclasses.replace(d, params=None), max_len=S,
                     eos_ids=tuple(target.tokenizer.eos_ids), acceptance=acceptance, temperature=float(temperature),
                     top_k=top_k, top_p=top_p)
  prompt = np.zeros((len(prompt_ids), P), np.int32)
  for i, p in enumerate(prompt_ids):
    prompt[i, :len(p)] = p
  lens = np.array([len(p) for p in prompt_ids], np.int32)
  return spec, d.params, (jnp.asarray(prompt), jnp.asarray(lens), jnp.asarray(max_new_tokens, jnp.int32))


_EXECUTABLES: dict = {}


def _executable(graphdef, spec, params, dparams, inputs, key):
  """Compiled program for these static settings and input shapes, compiled at most once. Weights
  (target and drafter) and the token budget are arguments: only shapes and dtypes enter the key."""
  shapes = lambda tree: tuple((x.shape, x.dtype) for x in jax.tree.leaves(tree))
  sig = (graphdef, spec, shapes(inputs), shapes(params), shapes(dparams))
  if sig not in _EXECUTABLES:
    if len(_EXECUTABLES) >= 16:
      _EXECUTABLES.pop(next(iter(_EXECUTABLES)))
    _compilation_cache()
    program = jax.jit(functools.partial(decode.run, graphdef, spec=spec))
    _EXECUTABLES[sig] = program.lower(params, dparams, *inputs, key).compile()
  return _EXECUTABLES[sig]


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


def generate(target: Target, prompts, *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, chat: bool = True,
             drafter="none", acceptance: str | None = None, **drafter_options) -> Generation:
  """Generates for a batch of prompts (strings, or lists of token ids) in one compiled program.

  drafter: "none" (autoregressive), "pld", "lookahead", "medusa" (the shipped checkpoint),
  "medusa:PATH" (your checkpoint), or a Drafter instance (with its `params` for a trained one);
  drafter_options are passed to it (e.g. num_tokens=4). acceptance: "greedy" (temperature 0), "sample" (lossless), or
  "typical" (lossy, opt-in). Temperature 0 is greedy.
  """
  ids = encode_prompts(target, prompts, chat)
  spec, dparams, inputs = prepare(target, ids, max_new_tokens=max_new_tokens, drafter=drafter,
                                 temperature=temperature, top_k=top_k, top_p=top_p, acceptance=acceptance,
                                 **drafter_options)
  graphdef, params = nnx.split(target.model)
  key = jax.random.key(seed)
  t0 = time.perf_counter()
  fn = _executable(graphdef, spec, params, dparams, inputs, key)
  t1 = time.perf_counter()
  res = fn(params, dparams, *inputs, key)
  res = jax.device_get(res)
  wall = time.perf_counter() - t1
  if res.nan.any():
    rows = np.flatnonzero(res.nan).tolist()
    raise FloatingPointError(f"the target produced NaN logits (rows {rows}); its weights or dtype are broken "
                             "(check the checkpoint, or try dtype='float32')")
  texts, token_ids = [], []
  for i, p in enumerate(ids):
    out = res.tokens[i, len(p):len(p) + int(res.new_tokens[i])].tolist()
    token_ids.append(out)
    texts.append(target.tokenizer.decode(out))
  new = [int(x) for x in res.new_tokens]
  fw = [int(x) for x in res.forwards]
  return Generation(texts=texts, token_ids=token_ids, new_tokens=new, target_forwards=fw,
                    tau=[n / max(f, 1) for n, f in zip(new, fw)], accepted_hist=res.accepted_hist.tolist(),
                    wall_s=wall, compile_s=t1 - t0, tokens_per_s=sum(new) / max(wall, 1e-9),
                    drafter=spec.drafter.name, acceptance=spec.acceptance,
                    lossless=accept_lib.LOSSLESS[spec.acceptance])


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
  logits = np.asarray(_last_logits_fn(graphdef)(params, jnp.asarray(seq), n))
  top2 = np.sort(logits)[-2:]
  return float(top2[1] - top2[0])
