"""Run settings recorded beside outputs (batch jobs, bench records) and compared on resume.

A resumed run must not mix outputs made with different settings. What is compared is the RESOLVED
configuration: every drafter option with its default filled in, the tree it builds and a hash of its
weights, so an option given at its default equals one left out, and a changed default, a regrown tree
or a retrained checkpoint all count as different settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import jax
import numpy as np


def _json(v):
  return json.loads(json.dumps(v, default=repr))


def weights_hash(params) -> str | None:
  """sha256 (16 hex digits) over every weight's dtype, shape and bytes; None without weights."""
  if params is None:
    return None
  h = hashlib.sha256()
  for path, x in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.asarray(x)
    h.update(f"{jax.tree_util.keystr(path)}{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def drafter_settings(drafter) -> dict:
  """{name, options (all, defaults included), nodes, max_depth, weights}: what a drafter will run."""
  opts = {f.name: getattr(drafter, f.name) for f in dataclasses.fields(drafter) if f.init and f.compare}
  return {"name": drafter.name, "options": _json(opts), "nodes": int(drafter.num_nodes),
          "max_depth": int(drafter.max_depth), "weights": weights_hash(drafter.params)}


def differences(old: dict, new: dict) -> list[str]:
  """'key: OLD there, NEW now' for every key of `new` whose value differs in `old`."""
  return [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in new.items() if old.get(k) != _json(v)]


def read(path: pathlib.Path) -> dict | None:
  """The settings recorded in `path`, or None when there are none."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  try:
    s = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError):
    raise ValueError(f"{path} is not a settings file written by specjax; remove it or use --overwrite") from None
  if not isinstance(s, dict):
    raise ValueError(f"{path} is not a settings file written by specjax; remove it or use --overwrite")
  return s


def write(path: pathlib.Path, settings: dict):
  """Writes atomically (a crash leaves the old file or the new one, never half of one)."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  with tmp.open("w", encoding="utf-8") as f:
    f.write(json.dumps(_json(settings), indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
