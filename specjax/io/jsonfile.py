"""JSON from files people hand us (config.json, tokenizer_config.json, JSONL lines): every failure is a
ValueError that names the file (and line), never a bare codec or parser error."""
from __future__ import annotations

import json
import pathlib


def show(v, limit: int = 60) -> str:
  """A short, one-line rendering of a JSON value for error messages."""
  try:
    s = json.dumps(v, ensure_ascii=True)
  except (TypeError, ValueError):
    s = repr(v)
  return s if len(s) <= limit else s[:limit - 3] + "..."


def parse(text: str, where: str):
  """json.loads(text); errors read `WHERE: invalid JSON (...)` with the column within `text`."""
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    # e.colno counts from the last newline, which is wrong for a cut line; e.pos is exact.
    if e.pos >= len(text.rstrip()):
      raise ValueError(f"{where}: invalid JSON (it ends early: {e.msg})") from None
    line = f"line {e.lineno} " if text.count("\n", 0, e.pos) else ""
    col = e.pos - text.rfind("\n", 0, e.pos)
    at = "" if e.msg.endswith(" at") else " at"        # "Unterminated string starting at" already says it
    raise ValueError(f"{where}: invalid JSON ({e.msg}{at} {line}column {col})") from None
  except RecursionError:
    raise ValueError(f"{where}: invalid JSON (nested too deeply)") from None
  except ValueError as e:          # e.g. an integer of more than 4300 digits
    raise ValueError(f"{where}: invalid JSON ({e})") from None


def decode_utf8(data: bytes, where: str) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{where}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1})") from None


def read(path: pathlib.Path):
  """The JSON value in a UTF-8 file (a leading byte-order mark is allowed)."""
  data = pathlib.Path(path).read_bytes()
  return parse(decode_utf8(data.removeprefix(b"\xef\xbb\xbf"), str(path)), str(path))
