"""Drafter checkpoints: one safetensors-format file, bfloat16 weights, JSON metadata in its header.

The file is readable by any safetensors reader. Metadata (all JSON strings): `format`
("specjax-drafter"), `drafter` (the drafter's name and static configuration), `target` (the
architecture, sizes, vocabulary and weight fingerprint of the model it was trained for),
`training` (data, settings, measured accuracies), `version` ("2") and `sha256`: of the header's tensors
table, of every other metadata entry (the tree, accuracies, node budget the decoder uses) and of the tensor
bytes, so an edited header is refused like corrupted weights. Every header field is checked (dtype, shape,
offsets inside the data and consistent with the shape, draft-vocabulary ids inside the vocabulary) before
use: a bad file gives one line, "... is corrupted: ...". Nothing is ever unpickled.

Version 1 files (sha256 of the tensor bytes only) are refused: accepting them would let a header edit
through. `upgrade(path)` re-hashes one whose tensor bytes still match its version 1 hash, for a file you trust.

One round trip serves every trained drafter: `save_drafter` writes its weights (the leaves of its params,
named by their path "a/b") and its stored fields (protocol.stored: neither BUDGET nor DERIVED);
`load_drafter` rebuilds it from them, reading each tensor against the drafter's own `module()`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from specjax.protocol import CheckpointError, stored, target_record

FORMAT = "specjax-drafter"
VERSION = "2"
_DTYPES = {"BF16": ml_dtypes.bfloat16, "F32": np.float32, "I32": np.int32}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def save(path, tensors: dict[str, np.ndarray], meta: dict) -> pathlib.Path:
  """Writes tensors (floats stored as bfloat16, ints as int32) and JSON-able metadata, atomically."""
  path = pathlib.Path(path)
  header, blobs, offset = {}, [], 0
  for name in sorted(tensors):
    x = np.asarray(tensors[name])
    x = x.astype(np.int32) if np.issubdtype(x.dtype, np.integer) else x.astype(ml_dtypes.bfloat16)
    b = np.ascontiguousarray(x).tobytes()
    header[name] = {"dtype": _NAMES[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
  data = b"".join(blobs)
  return _write(path, header, {k: json.dumps(v) for k, v in meta.items()}, data)


def _digest(tensors: dict, meta: dict, data: bytes) -> str:
  """sha256 of the tensors table, the metadata (but its own hash) and the tensor bytes."""
  table = {k: v for k, v in meta.items() if k != "sha256"}
  h = hashlib.sha256(json.dumps([tensors, table], sort_keys=True).encode())
  h.update(data)
  return h.hexdigest()


def _write(path: pathlib.Path, tensors: dict, meta: dict, data: bytes) -> pathlib.Path:
  """The file from its tensors table, metadata (JSON strings) and tensor bytes, hashed, atomically."""
  meta = {**meta, "format": FORMAT, "version": VERSION}
  header = {**tensors, "__metadata__": {**meta, "sha256": _digest(tensors, meta, data)}}
  head = json.dumps(header).encode()
  head += b" " * (-len(head) % 8)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + data)
  os.replace(tmp, path)
  return path


def load(path) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, metadata) with every check done; raises CheckpointError with a one-line reason."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"drafter checkpoint not found: {path}")
  raw = path.read_bytes()
  where = f"drafter checkpoint {path}"
  if len(raw) < 8:
    raise CheckpointError(f"{where} is truncated ({len(raw)} bytes)")
  n = struct.unpack("<Q", raw[:8])[0]
  if n > len(raw) - 8:
    raise CheckpointError(f"{where} is truncated or not a safetensors file (header of {n} bytes in a {len(raw)}-byte file)")
  header, meta, info = _header(raw[8:8 + n], where)
  data = raw[8 + n:]
  for name, t in header.items():
    _check_entry(name, t, where)
  end = max((t["data_offsets"][1] for t in header.values()), default=0)
  if len(data) < end:
    raise CheckpointError(f"{where} is truncated or corrupted ({len(data)} tensor bytes, its header names {end})")
  if meta.get("version") != VERSION:
    raise CheckpointError(f"{where} was written by an older specjax: its sha256 does not cover its header; train it "
                          "again, or, for a file you trust, rewrite it with specjax.io.checkpoint.upgrade(path)")
  if _digest(header, meta, data) != meta.get("sha256"):
    raise CheckpointError(f"{where} is corrupted (its header or tensor bytes do not match the recorded sha256)")
  tensors = {}
  for name, t in header.items():
    a, b = t["data_offsets"]
    tensors[name] = np.frombuffer(data[a:b], _DTYPES[t["dtype"]]).reshape(t["shape"])
  _check_vocab(tensors.get("vocab"), info, where)
  return tensors, info


def _header(head: bytes, where: str) -> tuple[dict, dict, dict]:
  """(tensors table, raw metadata, decoded metadata) of a header's JSON bytes."""
  try:
    header = json.loads(head)
    meta = header.pop("__metadata__")
    if meta.get("format") != FORMAT:
      raise KeyError("format")
    info = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "sha256", "version")}
  except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
    raise CheckpointError(f"{where} is not a specjax drafter checkpoint (no readable '{FORMAT}' header)") from None
  return header, meta, info


def _check_entry(name: str, t, where: str) -> None:
  """One tensors-table entry: dtype in _DTYPES, shape a list of sizes, data_offsets [a, b] with b - a the
  shape's bytes (whether they lie inside the data is checked beside the file's size)."""
  bad = lambda why: CheckpointError(f"{where} is corrupted: tensor {name!r} {why}")
  if not isinstance(t, dict):
    raise bad("is not a {dtype, shape, data_offsets} entry")
  if t.get("dtype") not in _DTYPES:
    raise bad(f"has dtype {t.get('dtype')!r}; expected one of {', '.join(_DTYPES)}")
  shape, offsets = t.get("shape"), t.get("data_offsets")
  is_size = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 48
  if not isinstance(shape, list) or not all(map(is_size, shape)):
    raise bad(f"has shape {shape!r}; expected a list of sizes")
  if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_size, offsets))):
    raise bad(f"has data_offsets {offsets!r}; expected [start, end]")
  need = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[t["dtype"]]).itemsize
  if offsets[1] - offsets[0] != need:
    raise bad(f"spans {offsets[1] - offsets[0]} bytes; its shape {shape} of {t['dtype']} needs {need}")


def _check_vocab(vocab, info: dict, where: str) -> None:
  """A draft vocabulary maps draft columns to target token ids: each must be a token of the target."""
  n = info.get("target", {}).get("vocab") if isinstance(info.get("target"), dict) else None
  if vocab is None:
    return
  if vocab.dtype != np.int32 or vocab.ndim != 1 or not isinstance(n, int):
    raise CheckpointError(f"{where} is corrupted: its draft vocabulary is not a list of token ids")
  if vocab.size and not (0 <= int(vocab.min()) and int(vocab.max()) < n):
    raise CheckpointError(f"{where} is corrupted: its draft vocabulary holds ids outside [0, {n})")


def upgrade(path) -> pathlib.Path:
  """Rewrites a version 1 checkpoint (sha256 of its tensor bytes only) as version 2, after checking that hash:
  the header is taken as it is, so use it only on a file you trust. Tensor bytes are unchanged."""
  path = pathlib.Path(path)
  raw = path.read_bytes()
  n = struct.unpack("<Q", raw[:8])[0]
  header, meta, _ = _header(raw[8:8 + n], f"drafter checkpoint {path}")
  data = raw[8 + n:]
  if meta.get("version") == VERSION:
    return path
  if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
    raise CheckpointError(f"drafter checkpoint {path} is corrupted (its tensor bytes do not match its sha256)")
  return _write(path, header, {k: v for k, v in meta.items() if k not in ("format", "sha256")}, data)


def _names(state) -> list[str]:
  """The checkpoint names of a params state's leaves, in its leaves' order: their paths, "a/b"."""
  pure = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
  return ["/".join(str(k.key) for k in path) for path, _ in pure]


def save_drafter(path, drafter, target, training: dict | None = None) -> pathlib.Path:
  """Writes a trained drafter: its weights, its stored fields, the target's record and `training`."""
  tensors = dict(zip(_names(drafter.params), map(np.asarray, jax.tree.leaves(drafter.params))))
  config = {f: getattr(drafter, f) for f in stored(drafter)}
  return save(path, tensors, {"drafter": {"name": drafter.name, "config": config}, "target": target_record(target),
                              "training": training or {}})


def _tuples(v):
  """JSON lists back to the tuples a frozen drafter holds."""
  return tuple(map(_tuples, v)) if isinstance(v, list) else v


def load_drafter(path, cls, **options):
  """The drafter of class `cls` a checkpoint holds, with `options` (BUDGET ones, or stored ones at their
  stored value), its weights and what training measured; raises CheckpointError with a one-line reason."""
  path = pathlib.Path(path)
  tensors, meta = load(path)
  recorded = meta.get("drafter", {}).get("name")
  if recorded != cls.name:
    raise CheckpointError(f"{path} holds a {recorded!r} drafter, not {cls.name!r}")
  keep = set(stored(cls))
  config = {k: _tuples(v) for k, v in meta["drafter"].get("config", {}).items() if k in keep}
  for k, v in options.items():
    if k in config and v != config[k]:
      raise CheckpointError(f"{cls.name}: the checkpoint's weights were trained for {k} {config[k]!r}, not {v!r}")
  tau = meta.get("training", {}).get("eval", {}).get("tau_by_nodes") or {}
  d = cls(**{**config, **options}, trained_for=json.dumps(meta["target"], sort_keys=True),
          heldout_tau=tuple((str(k), float(v)) for k, v in tau.items()))
  d.validate()
  abstract = nnx.split(nnx.eval_shape(d.module))[1]
  leaves, tree = jax.tree.flatten(abstract)
  out = []
  for name, want in zip(_names(abstract), leaves):
    t = tensors.get(name)
    if t is None:
      raise CheckpointError(f"{path}: the {d.name} checkpoint lacks tensor {name!r}")
    if tuple(t.shape) != tuple(want.shape):
      raise CheckpointError(f"{path}: the {d.name} checkpoint's tensor {name!r} has shape {tuple(t.shape)}, "
                            f"expected {tuple(want.shape)}")
    out.append(jnp.asarray(t, want.dtype))
  return dataclasses.replace(d, params=jax.tree.unflatten(tree, out))
