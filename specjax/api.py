"""Public entry points: `load` a target (on a device mesh, if given) and `generate` (autoregressive or
speculative) over it.

A thin façade over the loaders (specjax.io) and the program layer (specjax.program): it checks the
arguments once (Settings.make), encodes the prompts and hands them to the target's `Program`.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax

from specjax import io as sio
from specjax.io import Target
from specjax.program import (MIN_TEMPERATURE, SEED_LIMIT, Generation, Prepared, Program, Settings,  # noqa: F401
                             check_fits, check_sampling, check_seed, check_target, check_tree_budget, divergence,
                             encode_prompts, first_diff, next_token_gap, sharded)


def load(path: str | pathlib.Path = "default", *, dtype="float32", chat_template: str | None = None, mesh=None,
         precision: str = "exact") -> Target:
  """Loads a target: "default", a .gguf file, or a Hugging Face directory (config.json + safetensors).
  dtype: the weights' ("float32" or "bfloat16"). chat_template: which of the model's named chat templates
  to use (default: the one named "default").
  mesh: a device mesh (specjax.make_mesh) to place the weights on, shard by shard, as their declared logical
  axes and the partition rules say (specjax.program.sharded); generate then runs sharded over it.
  precision: "exact" (every matmul in true float32, or exact bfloat16 products with float32 sums) or
  "fast" (the backend's default: TF32 on GPUs, one bfloat16 pass on TPUs; outputs may then differ from
  autoregressive decoding at near-ties): see specjax/numerics.py."""
  shardings = None if sharded.check_mesh(mesh) is None else functools.partial(sharded.weight_shardings, mesh)
  target = sio.load(path, dtype=dtype, chat_template=chat_template, shardings=shardings, precision=precision)
  return target if mesh is None else dataclasses.replace(target, mesh=mesh)


def prepare(target: Target, prompt_ids: list[list[int]], *, max_new_tokens: int, drafter, temperature=0.0,
            top_k=None, top_p=None, acceptance=None, precision="exact", **drafter_options):
  """Validates everything and returns (spec, drafter weights, device inputs) for the compiled `decode.run`."""
  check_target(target)
  settings = Settings.make(drafter=drafter, drafter_options=drafter_options, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, acceptance=acceptance,
                           precision=precision)
  p = Program(target, mesh=None).prepare(prompt_ids, settings)
  return p.spec, p.dparams, p.inputs


def lower(target: Target, prompt_ids: list[list[int]], *, max_new_tokens: int = 8, drafter="none",
          precision: str | None = None, **options) -> jax.stages.Lowered:
  """The one-device decode program for these prompts (token ids) and settings, lowered but not compiled:
  `.as_text()` shows every dot's numerics (tests/test_numerics.py). options: sampling and drafter options."""
  precision = target.precision if precision is None else precision
  spec, dparams, inputs = prepare(target, prompt_ids, max_new_tokens=max_new_tokens, drafter=drafter,
                                  precision=precision, **options)
  return Program(target, mesh=None).lower(Prepared(spec, dparams, inputs), jax.random.key(0))


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
  check_target(target)
  settings = Settings.make(drafter=drafter, drafter_options=drafter_options, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, acceptance=acceptance, seed=seed,
                           chat=chat, allow_special=allow_special, tree_budget=tree_budget, time_prefill=time_prefill,
                           precision=precision)
  program = Program(target, mesh)
  return program.generate(encode_prompts(target, prompts, chat, allow_special), settings)
