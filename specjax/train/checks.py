"""Every argument of `train_drafter` checked before any work: distillation and feature extraction take
from seconds to hours, and an argument refused only afterwards (an --out that is a file) wastes them.

`arguments` needs no model (the CLI calls it before loading one).
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _number(name: str, v, *, low: float, low_ok: bool, high: float = math.inf, high_ok: bool = True,
            none_ok: bool = False, integer: bool = False):
  """ValueError naming `name` unless v is a number in the range (an integer when `integer`), or None
  when none_ok."""
  if v is None and none_ok:
    return
  kind = "an integer" if integer else "a number"
  ok_type = _is_int(v) if integer else (_is_int(v) or isinstance(v, float))
  where = (f">= {low:g}" if low_ok else f"> {low:g}") if high == math.inf else \
      ("[" if low_ok else "(") + f"{low:g}, {high:g}" + ("]" if high_ok else ")")
  if not ok_type or not math.isfinite(v) or not ((v >= low if low_ok else v > low) and (v <= high if high_ok else v < high)):
    raise ValueError(f"{name} must be {kind} {'in ' if high < math.inf else ''}{where}{' or None' if none_ok else ''}, "
                     f"got {v!r}")


def check_out(out) -> pathlib.Path:
  """OUT as a directory that exists (made here, with its parents) or ValueError naming why it cannot be."""
  if not isinstance(out, (str, os.PathLike)) or not str(out):
    raise TypeError(f"out must be a directory path (str or os.PathLike), got {out!r}")
  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} is a file; give a directory (the drafter is written to OUT/<drafter>.safetensors)")
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"--out {out} cannot be made a directory ({e.strerror or e})") from None
  if not os.access(out, os.W_OK | os.X_OK):
    raise ValueError(f"--out {out} is not writable")
  return out


def arguments(*, drafter, out, data, max_prompts, heldout_prompts, answer_tokens, sequences_file, prompts_dir,
              gen_batch, feature_batch_tokens, overwrite, stop_after, max_seconds, progress, log, config: dict,
              features: str = "disk"):
  """Everything but the target; raises ValueError / TypeError naming the argument. `config`: TrainConfig
  fields. Creates OUT when it does not exist (the one way to know it can be)."""
  from specjax.train import loop
  if not isinstance(drafter, str) or drafter not in loop.RECIPES:
    raise ValueError(f"no trainer for drafter {drafter!r}; trainable: {', '.join(loop.RECIPES)}")
  if data not in ("distill", "teacher"):
    raise ValueError(f"data must be 'distill' or 'teacher', got {data!r}")
  if features not in ("disk", "online"):
    raise ValueError(f"features must be 'disk' or 'online', got {features!r}")
  from specjax.train.sequence import SequenceRecipe
  if features == "online" and not issubclass(loop.RECIPES[drafter], SequenceRecipe):
    # Their batches are single positions of many sequences: a forward per step would serve one position of each.
    raise ValueError(f"--features online trains drafters that read whole sequences (clover, clover2, eagle, eagle3), "
                     f"not {drafter}; use --features disk")
  for name, v in (("max_prompts", max_prompts), ("heldout_prompts", heldout_prompts), ("answer_tokens", answer_tokens),
                  ("gen_batch", gen_batch), ("feature_batch_tokens", feature_batch_tokens)):
    _number(name, v, low=1, low_ok=True, integer=True)
  _number("stop_after", stop_after, low=1, low_ok=True, integer=True, none_ok=True)
  _number("max_seconds", max_seconds, low=0, low_ok=False, none_ok=True)
  for name, v in (("overwrite", overwrite), ("progress", progress)):
    if not isinstance(v, bool):
      raise TypeError(f"{name} must be True or False, got {v!r}")
  if not callable(log):
    raise TypeError(f"log must be a callable taking one message, got {log!r}")
  if sequences_file is not None and not pathlib.Path(sequences_file).is_file():
    raise FileNotFoundError(f"--sequences {sequences_file}: no such file")
  _config(config)
  out = check_out(out)
  _check_prompts(prompts_dir)
  return out


def _check_prompts(prompts_dir):
  """--prompts: None (the shipped mix, which must be installed), a prompts file, or a train-prompts
  directory holding at least one of the sources data.training_prompts reads."""
  from specjax.train import data as data_lib, store
  d = pathlib.Path(prompts_dir) if prompts_dir is not None else data_lib.default_prompts_dir()
  if d is None:
    if not store.PACKAGED.is_file():
      raise FileNotFoundError(f"the prompt mix shipped with specjax is missing ({store.PACKAGED}); reinstall "
                              "specjax or give --prompts DIR|FILE")
    return
  if d.is_file():
    if d.suffix not in (".jsonl", ".json"):
      raise ValueError(f"--prompts {d}: a prompts file is .jsonl (one object a line) or .json (a list of objects)")
    return
  if not d.is_dir() or not any((d / name).is_file() for name in data_lib.SOURCES):
    raise FileNotFoundError(f"no training prompts in {d}: expected some of {', '.join(data_lib.SOURCES)} "
                            "(set --prompts DIR|FILE or SPECJAX_TRAIN_PROMPTS)")


CHOICES = {"clip_by": (None, "norm", "value"), "targets": ("full", "top8"), "own_head": (None, True, False)}


def _config(config: dict):
  """TrainConfig fields: known names, each of its type and range."""
  from specjax.train import loop
  fields = {f.name for f in dataclasses.fields(loop.TrainConfig)} - {"drafter"}
  unknown = set(config) - fields
  if unknown:
    raise ValueError(f"unknown training option(s) {sorted(unknown)}; options: {sorted(fields)}")
  ints = {"steps": 1, "warmup": 0, "seed": 0, "eval_every": 1, "save_every": 1, "eval_positions": 1, "heads": 1,
          "layers": 1, "draft_vocab": 0, "exit_layer": 0, "nodes": 1, "batch": 1}
  for name, v in config.items():
    if name in ints:
      _number(name, v, low=ints[name], low_ok=True, integer=True, none_ok=name in ("batch", "heads"))
    elif name == "lr":
      _number(name, v, low=0, low_ok=False)
    elif name == "weight_decay":
      _number(name, v, low=0, low_ok=True, none_ok=True)
    elif name in CHOICES and not any(v is c or (type(v) is str and v == c) for c in CHOICES[name]):
      raise ValueError(f"{name} must be one of {', '.join(map(repr, CHOICES[name]))}, got {v!r}")
    elif name == "clip":
      _number(name, v, low=0, low_ok=False, none_ok=True)
    elif name in ("b1", "b2"):
      _number(name, v, low=0, low_ok=True, high=1, high_ok=False, none_ok=name == "b2")


def against_target(target):
  """A loaded Target (its sizes are checked by the drafter's recipe, before any data is made)."""
  from specjax.io import Target
  if not isinstance(target, Target):
    raise TypeError(f"target must be a loaded model (specjax.load(...)), got {type(target).__name__}")
  return target
