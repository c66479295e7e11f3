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
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct

import ml_dtypes
import numpy as np

FORMAT = "specjax-drafter"
VERSION = "2"
_DTYPES = {"BF16": ml_dtypes.bfloat16, "F32": np.float32, "I32": np.int32}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: missing, truncated, corrupted, or for another target."""


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


def target_info(target) -> dict:
  """What a checkpoint records about the target it was trained for."""
  c = target.cfg
  return {"arch": c.arch, "hidden": c.hidden, "layers": c.layers, "heads": c.heads, "kv_heads": c.kv_heads,
          "vocab": c.vocab, "fingerprint": target.fingerprint, "path": pathlib.Path(target.path).name}


def check_target(recorded: dict, target, where: str) -> None:
  """Raises CheckpointError when `target` is not the model the checkpoint was trained for."""
  mine = target_info(target)
  for key in ("arch", "hidden", "layers", "vocab", "fingerprint"):
    if recorded.get(key) != mine[key]:
      raise CheckpointError(f"{where} was trained for another target ({key} {recorded.get(key)!r}, this target has "
                            f"{mine[key]!r}; trained for {recorded.get('path', '?')}); train one for this model "
                            "with `specjax train`")
