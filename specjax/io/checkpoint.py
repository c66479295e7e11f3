"""Drafter checkpoints: one safetensors-format file, bfloat16 weights, JSON metadata in its header.

The file is readable by any safetensors reader. Metadata (all JSON strings): `format`
("specjax-drafter"), `drafter` (the drafter's name and static configuration), `target` (the
architecture, sizes, vocabulary and weight fingerprint of the model it was trained for),
`training` (data, settings, measured accuracies) and `sha256` (of the tensor bytes), so a
truncated or corrupted file is refused before use. Nothing is ever unpickled.
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
  header["__metadata__"] = {"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
                            **{k: json.dumps(v) for k, v in meta.items()}}
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
  try:
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    if meta.get("format") != FORMAT:
      raise KeyError("format")
    info = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "sha256")}
  except (ValueError, KeyError, TypeError, AttributeError):
    raise CheckpointError(f"{where} is not a specjax drafter checkpoint (no readable '{FORMAT}' header)") from None
  data = raw[8 + n:]
  end = max((t["data_offsets"][1] for t in header.values()), default=0)
  if len(data) < end:
    raise CheckpointError(f"{where} is truncated ({len(data)} of {end} tensor bytes)")
  if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
    raise CheckpointError(f"{where} is corrupted (its tensor bytes do not match the recorded sha256)")
  tensors = {}
  for name, t in header.items():
    a, b = t["data_offsets"]
    tensors[name] = np.frombuffer(data[a:b], _DTYPES[t["dtype"]]).reshape(t["shape"])
  return tensors, info


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
