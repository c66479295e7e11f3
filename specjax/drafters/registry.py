"""Drafter names -> classes, and construction with validated options.

Weightless drafters are built from their options ("pld", "lookahead"). Trained ones (`trained()`: those
whose method has a training module, specjax/train/<module>.py) load a checkpoint: "medusa" is the checkpoint
shipped for the default model (checkpoints/medusa.safetensors), "medusa:PATH" any file written by
`specjax train`. The draft-model
family names its main option after a colon, so one benchmark can run several: "draft-model:PATH"
(option model), "self-spec:K" and "staged:K" (option exit_layer).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib


# name -> "module:class", imported on use: the CLI's help lists the names without starting JAX.
_CLASSES = {"none": "base:NoDrafter", "pld": "ngram:PromptLookup", "lookahead": "lookahead:Lookahead",
            "medusa": "medusa:Medusa", "clover": "clover:Clover1", "clover2": "clover:Clover2", "eagle": "eagle:Eagle",
            "eagle3": "eagle:Eagle3", "draft-model": "draft_model:DraftModel", "self-spec": "draft_model:SelfSpec",
            "staged": "draft_model:Staged", "early-exit": "early_exit:EarlyExit"}


def register(name: str, where) -> None:
  """Adds a drafter under `name`: its class, or "module:Class" (a module of specjax.drafters, or a dotted
  module path), imported on use. Adding a drafter touches its own files and this one call."""
  _CLASSES[name] = where


register("parallelspec", "parallelspec:ParallelSpec")
register("cerberus", "cerberus:Cerberus")
register("hidden-transfer", "hidden_transfer:HiddenTransfer")
register("adadecode", "adadecode:AdaDecode")


def drafter_class(name: str):
  """The class registered under `name` (imported on use)."""
  return _classes()[name]


def _classes() -> dict:
  out = {}
  for name, where in _CLASSES.items():
    if not isinstance(where, str):
      out[name] = where
      continue
    module, _, cls = where.partition(":")
    out[name] = getattr(importlib.import_module(module if "." in module else f"specjax.drafters.{module}"), cls)
  return out


def module_of(name: str) -> str | None:
  """The module of specjax.drafters that defines drafter `name` (None for one registered from elsewhere)."""
  where = _CLASSES[name]
  module = where.partition(":")[0] if isinstance(where, str) else ""
  return module if module and "." not in module else None


def trained() -> list[str]:
  """The drafters whose weights are trained: those whose method has its training beside it,
  specjax/train/<module>.py (its losses and recipe), so `specjax train` makes their checkpoints and a
  name loads one. Read from the file layout: imports nothing (the CLI's help lists them without JAX)."""
  train = pathlib.Path(__file__).resolve().parents[1] / "train"
  return [k for k in names() if module_of(k) and (train / f"{module_of(k)}.py").is_file()]
NAMED_OPTION = {"draft-model": "model", "self-spec": "exit_layer", "staged": "exit_layer"}   # "NAME:VALUE"


def names() -> list[str]:
  return list(_CLASSES)


def shipped() -> list[str]:
  """Trained drafters with a checkpoint shipped for the default model (usable by name alone)."""
  return [k for k in trained() if checkpoint_path(k).is_file()]


def describe() -> str:
  """The drafters for a help text, from this registry (so the text cannot go stale)."""
  weightless = [k for k in names() if k not in trained() and k not in NAMED_OPTION]
  return (f"{', '.join(weightless)}; trained: {', '.join(trained())} (NAME:PATH for a file from `specjax train`; "
          f"by name alone: the checkpoint shipped for the default model, for {', '.join(shipped()) or 'none'}); "
          f"{', '.join(f'{k}:{_METAVAR[NAMED_OPTION[k]]}' for k in NAMED_OPTION)} (or NAME with -O "
          f"{' / -O '.join(f'{o}={m}' for o, m in _METAVAR.items())})")


_METAVAR = {"model": "PATH", "exit_layer": "K"}


def checkpoints_dir() -> pathlib.Path:
  """$SPECJAX_CHECKPOINTS, else checkpoints/ at the repository root (an editable install)."""
  env = os.environ.get("SPECJAX_CHECKPOINTS")
  return pathlib.Path(env) if env else pathlib.Path(__file__).resolve().parents[2] / "checkpoints"


def checkpoint_path(name: str) -> pathlib.Path:
  kind, sep, path = name.partition(":")
  return pathlib.Path(path) if sep else checkpoints_dir() / f"{kind}.safetensors"


def load_trained(name: str, **options):
  """'medusa' or 'medusa:PATH' -> the drafter with its weights (every file check done here)."""
  from specjax.io import checkpoint
  kind = name.partition(":")[0]
  path = checkpoint_path(name)
  if ":" not in name and not path.is_file():
    raise checkpoint.CheckpointError(f"no {kind!r} checkpoint is shipped for the default model ({path}); train one with "
                                     f"`specjax train --drafter {kind}` and pass {kind}:PATH")
  return checkpoint.load_drafter(path, drafter_class(kind), **options)


def make(drafter, **options):
  """A validated drafter from a name ("pld", "medusa:PATH", "self-spec:8") or a Drafter, with `options`."""
  from specjax.protocol import Drafter, check_option_types, options as options_of
  if not isinstance(drafter, (str, Drafter)):
    raise TypeError(f"drafter must be a name such as 'pld' or 'medusa:PATH' (a str) or a Drafter, got "
                    f"{type(drafter).__name__} {drafter!r:.60}")
  kind = drafter.name if isinstance(drafter, Drafter) else drafter.partition(":")[0]
  if not isinstance(drafter, Drafter) and kind not in _classes():
    raise ValueError(f"unknown drafter {drafter!r}; choose from {', '.join(_classes())} (or medusa:PATH)")
  cls = type(drafter) if isinstance(drafter, Drafter) else drafter_class(kind)
  fields = set(options_of(cls))
  unknown = set(options) - fields
  if unknown:
    raise ValueError(f"drafter {kind!r} has no option(s) {sorted(unknown)}; its options: {sorted(fields) or 'none'}")
  if isinstance(drafter, Drafter):
    if options:
      drafter = dataclasses.replace(drafter, **options)
  else:
    if kind in NAMED_OPTION:
      _, sep, value = drafter.partition(":")
      if sep:
        opt = NAMED_OPTION[kind]
        if opt in options:
          raise ValueError(f"drafter {drafter!r} names {opt} already; do not pass it as an option too")
        options = {**options, opt: _named_value(kind, opt, value)}
      drafter = cls.load(**options) if hasattr(cls, "load") else cls(**options)
    elif kind in trained():
      check_option_types(cls(**options))        # wrong option types are refused before any file is read
      drafter = load_trained(drafter, **options)
    else:
      if drafter != kind:
        raise ValueError(f"drafter {kind!r} has no weights to load (got {drafter!r})")
      drafter = cls(**options)
  drafter.validate()
  return drafter


def _named_value(kind: str, opt: str, value: str):
  if opt == "model":
    return value
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"drafter {kind}:{value}: {opt} must be an integer, e.g. {kind}:8") from None
