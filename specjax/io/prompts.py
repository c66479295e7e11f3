"""Prompts from people: JSONL prompts files (a path, or "-" for standard input) and checks on any prompt text.

A prompts file has one JSON object a line: {"prompt": text[, "id", "category"]} or a Spec-Bench row
{"question_id", "category", "turns"} (its first turn). Every error is one ValueError naming FILE:LINE.

Each row has a key that no edit of other rows changes (batch jobs resume by it): its explicit id, or else
`<sha256 of its prompt, 16 hex digits>#<n>` for the n-th row without an id holding that prompt. Keying rows
by their position would pair old answers with other prompts once a line is inserted, deleted or fixed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sys

from specjax.io import jsonfile

MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
STDIN = "-"


@dataclasses.dataclass
class Prompt:
  id: object            # question_id for Spec-Bench rows, else the row's "id", else its content key (see above)
  text: str
  category: str
  group: str

  @property
  def sha256(self) -> str:
    return prompt_sha256(self.text)


def prompt_sha256(text: str) -> str:
  """Hex sha256 of a prompt's UTF-8 text: what a batch result records to name its prompt."""
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RowKeys:
  """Gives each good row of one file its key (see the module docstring) and refuses a repeated id."""

  def __init__(self):
    self.first: dict[str, int] = {}       # key -> line it was first given on
    self.count: dict[str, int] = {}       # prompt sha256 -> rows without an id seen with it

  def assign(self, pr: Prompt, lineno: int, where: str) -> Prompt:
    """pr with its key as id (unchanged when it has one); ValueError for an id already given."""
    if pr.id is None:
      h = pr.sha256
      while True:                          # an explicit id may spell an automatic key: take the next
        self.count[h] = self.count.get(h, 0) + 1
        pr.id = f"{h[:16]}#{self.count[h]}"
        if pr.id not in self.first:
          break
    elif str(pr.id) in self.first:
      raise ValueError(f"{where}: duplicate id {pr.id!r} (first on line {self.first[str(pr.id)]})")
    self.first[str(pr.id)] = lineno
    return pr


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


def parse_prompt_row(row, where: str) -> Prompt:
  """{"prompt": text[, "id", "category"]} or a Spec-Bench row {"question_id", "category", "turns"}; the
  Prompt's id is None when the row has none (RowKeys gives it one)."""
  if not isinstance(row, dict):
    raise ValueError(f"{where}: expected a JSON object, got {jsonfile.show(row)}")
  if "prompt" in row:
    text = row["prompt"]
    pid = row.get("id", row.get("question_id"))
  elif "turns" in row:
    turns = row["turns"]
    if not isinstance(turns, list) or not turns:
      raise ValueError(f"{where}: 'turns' must be a non-empty list")
    text = turns[0]
    pid = row.get("question_id", row.get("id"))
  else:
    raise ValueError(f"{where}: a row needs 'prompt' or 'turns' (a Spec-Bench row)")
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f"{where}: the prompt is empty or not a string")
  check_text(text, f"{where}: the prompt")
  if pid is not None and (not isinstance(pid, (str, int)) or isinstance(pid, bool)):
    raise ValueError(f"{where}: the id must be a string or an integer, got {jsonfile.show(pid)}")
  if isinstance(pid, str):
    check_text(pid, f"{where}: the id")
  cat = row.get("category")
  if cat is not None and not isinstance(cat, str):
    raise ValueError(f"{where}: the category must be a string, got {jsonfile.show(cat)}")
  if cat is not None:
    check_text(cat, f"{where}: the category")
  return Prompt(pid, text, cat or "other", group_of(cat))


def parse_line(raw: bytes, where: str) -> Prompt | None:
  """One JSONL line (bytes, without its newline) -> a Prompt, or None for a blank line."""
  line = jsonfile.decode_utf8(raw.removesuffix(b"\r"), where)
  if not line.strip():
    return None
  return parse_prompt_row(jsonfile.parse(line, where), where)


def parse_prompts(data: bytes, name: str) -> list[Prompt]:
  """The prompts in a JSONL file's bytes; `name` is the file's name for errors."""
  out, keys = [], RowKeys()
  for lineno, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
    where = f"{name}:{lineno}"
    pr = parse_line(raw, where)
    if pr is not None:
      out.append(keys.assign(pr, lineno, where))
  if not out:
    raise ValueError(f"{name}: no prompts in the file")
  return out


def stream_prompts(path):
  """Streams a JSONL prompts file without holding it: yields (line number, Prompt) for each good row
  and (line number, ValueError) for each bad one (invalid UTF-8 or JSON, no prompt, a duplicate id),
  so a long job can record the bad rows and go on. Blank lines are skipped. Each Prompt's id is its key."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"prompts file not found: {p}")
  if p.is_dir():
    raise ValueError(f"{p} is a directory, not a JSONL prompts file")
  keys = RowKeys()
  with p.open("rb") as f:
    for lineno, raw in enumerate(f, 1):
      raw = raw.removesuffix(b"\n")
      if lineno == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
      where = f"{p}:{lineno}"
      try:
        pr = parse_line(raw, where)
        pr = pr and keys.assign(pr, lineno, where)
      except ValueError as e:
        pr = e
      if pr is not None:
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
