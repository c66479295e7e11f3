"""Prompts from people: JSONL prompts files (a path, or "-" for standard input) and checks on any prompt text.

A prompts file has one JSON object a line: {"prompt": text[, "id", "category"]} or a Spec-Bench row
{"question_id", "category", "turns"} (its first turn). Every error is one ValueError naming FILE:LINE.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys

from specjax.io import jsonfile

MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
STDIN = "-"


@dataclasses.dataclass
class Prompt:
  id: object            # question_id for Spec-Bench rows, else the row's "id", else its index in the file
  text: str
  category: str
  group: str


def group_of(category: str | None) -> str:
  """Spec-Bench category -> category group: the 8 MT-bench categories are "mt_bench"."""
  if not category:
    return "other"
  return "mt_bench" if category in MT_BENCH else str(category)


def check_text(text: str, what: str) -> str:
  """`text` unchanged, or ValueError when it is not valid Unicode (a lone surrogate: from JSON's "\\ud800",
  or from a command-line byte that is not UTF-8, which Python keeps as U+DC80..U+DCFF)."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    c = ord(text[e.start])
    bad = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"lone surrogate U+{c:04X}"
    raise ValueError(f"{what} is not valid UTF-8 text ({bad} at character {e.start})") from None
  return text


def parse_prompt_row(row, where: str, index: int) -> Prompt:
  """{"prompt": text[, "id", "category"]} or a Spec-Bench row {"question_id", "category", "turns"}."""
  if not isinstance(row, dict):
    raise ValueError(f"{where}: expected a JSON object, got {jsonfile.show(row)}")
  if "prompt" in row:
    text = row["prompt"]
    pid = row.get("id", row.get("question_id", index))
  elif "turns" in row:
    turns = row["turns"]
    if not isinstance(turns, list) or not turns:
      raise ValueError(f"{where}: 'turns' must be a non-empty list")
    text = turns[0]
    pid = row.get("question_id", row.get("id", index))
  else:
    raise ValueError(f"{where}: a row needs 'prompt' or 'turns' (a Spec-Bench row)")
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f"{where}: the prompt is empty or not a string")
  check_text(text, f"{where}: the prompt")
  if not isinstance(pid, (str, int)) or isinstance(pid, bool):
    raise ValueError(f"{where}: the id must be a string or an integer, got {jsonfile.show(pid)}")
  if isinstance(pid, str):
    check_text(pid, f"{where}: the id")
  cat = row.get("category")
  if cat is not None and not isinstance(cat, str):
    raise ValueError(f"{where}: the category must be a string, got {jsonfile.show(cat)}")
  if cat is not None:
    check_text(cat, f"{where}: the category")
  return Prompt(pid, text, cat or "other", group_of(cat))


def parse_line(raw: bytes, where: str, index: int) -> Prompt | None:
  """One JSONL line (bytes, without its newline) -> a Prompt, or None for a blank line."""
  line = jsonfile.decode_utf8(raw.removesuffix(b"\r"), where)
  if not line.strip():
    return None
  return parse_prompt_row(jsonfile.parse(line, where), where, index)


def parse_prompts(data: bytes, name: str) -> list[Prompt]:
  """The prompts in a JSONL file's bytes; `name` is the file's name for errors."""
  out, seen = [], set()
  for lineno, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
    where = f"{name}:{lineno}"
    pr = parse_line(raw, where, len(out))
    if pr is None:
      continue
    if str(pr.id) in seen:
      raise ValueError(f"{where}: duplicate id {pr.id!r}")
    seen.add(str(pr.id))
    out.append(pr)
  if not out:
    raise ValueError(f"{name}: no prompts in the file")
  return out


def stream_prompts(path):
  """Streams a JSONL prompts file without holding it: yields (line number, Prompt) for each good row
  and (line number, ValueError) for each bad one (invalid UTF-8 or JSON, no prompt, a duplicate id),
  so a long job can record the bad rows and go on. Blank lines are skipped."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"prompts file not found: {p}")
  if p.is_dir():
    raise ValueError(f"{p} is a directory, not a JSONL prompts file")
  seen: dict[str, int] = {}
  with p.open("rb") as f:
    for lineno, raw in enumerate(f, 1):
      raw = raw.removesuffix(b"\n")
      if lineno == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
      where = f"{p}:{lineno}"
      try:
        pr = parse_line(raw, where, len(seen))
      except ValueError as e:
        yield lineno, e
        continue
      if pr is None:
        continue
      if str(pr.id) in seen:
        yield lineno, ValueError(f"{where}: duplicate id {pr.id!r} (first on line {seen[str(pr.id)]})")
        continue
      seen[str(pr.id)] = lineno
      yield lineno, pr


def count_lines(path) -> int:
  """Lines of a file (a progress bar's total), read in 1 MiB blocks."""
  n, last = 0, b"\n"
  with pathlib.Path(path).open("rb") as f:
    while block := f.read(1 << 20):
      n += block.count(b"\n")
      last = block[-1:]
  return n + (last != b"\n")


def read_prompts(path) -> list[Prompt]:
  """Reads a JSONL prompts file, or standard input for "-". Raises FileNotFoundError / ValueError."""
  if str(path) == STDIN:
    return parse_prompts(sys.stdin.buffer.read(), "<stdin>")
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"prompts file not found: {p}")
  if p.is_dir():
    raise ValueError(f"{p} is a directory, not a JSONL prompts file")
  return parse_prompts(p.read_bytes(), str(p))
