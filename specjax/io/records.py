"""A crash-safe JSONL record log: one JSON object a line, each append flushed and fsync'ed.

A crash mid-write leaves a torn last line; `load` drops it (and any other line that does not parse)
once, rewriting the file atomically with a warning, so later runs read a clean file silently.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys


def _parse(raw: bytes, valid):
  try:
    r = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError, RecursionError):
    return None
  return r if isinstance(r, dict) and valid(r) else None


def load(path: pathlib.Path, *, valid=lambda r: True, label: str = "specjax") -> list[dict]:
  """The records in `path` (none when it is missing), in file order. Lines that are not a JSON object
  for which valid(record) holds are removed from the file, with one warning on stderr."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  data = path.read_bytes()
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()                      # the file ends with a newline, as a finished write leaves it
  good, keep = [], []
  for raw in lines:
    if not raw.strip():
      continue
    r = _parse(raw, valid)
    if r is not None:
      good.append(r)
      keep.append(raw)
  dropped = sum(1 for raw in lines if raw.strip()) - len(keep)
  if dropped or (data and not data.endswith(b"\n")):
    _replace(path, b"".join(raw + b"\n" for raw in keep))
    if dropped:
      print(f"{label}: warning: removed {dropped} unreadable line(s) from {path} (a write cut short by a "
            "crash); those records are measured again", file=sys.stderr)
  return good


def write_all(path: pathlib.Path, records: list[dict]):
  """Replaces `path` with `records`, atomically (a crash leaves the old file or the new one)."""
  _replace(pathlib.Path(path), "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode("utf-8"))


def _replace(path: pathlib.Path, data: bytes):
  tmp = path.with_name(path.name + ".tmp")
  with tmp.open("wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class RecordLog:
  """Appends records as JSON lines; each `write` is flushed and fsync'ed before it returns."""

  def __init__(self, path: pathlib.Path):
    self._f = pathlib.Path(path).open("a", encoding="utf-8")

  def write(self, records: list[dict]):
    self._f.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self):
    self._f.close()
