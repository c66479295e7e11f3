"""Training data on disk: the prompt mix shipped with specjax (PACKAGED, built by specjax.train.mix) and
the self-distilled answers kept in the repository (data/answers/), so training data accumulates across machines.

    data/answers/<target fingerprint>/a<answer_tokens>/shard-<content hash>.npz
      ids [n] str             record ids of the prompt mix (specjax.train.data.Record.id)
      prompt_sha [n] str      sha1 of the prompt's token ids (chat template applied, truncated): an answer is
                              used only for the same prompt tokens, so a changed template or truncation
                              never pairs an answer with another prompt
      offsets [n + 1] int64   answer i is tokens[offsets[i]:offsets[i + 1]]
      tokens [m] uint16       the answer tokens (int32 for a vocabulary over 65536)

Shards are named by their content, so shards made on different machines merge by copying files; a
killed run loses at most its unwritten shard. The total is capped (MAX_BYTES, 30 MB) to keep the
repository small. Written by specjax.train.answers; read by `specjax train` (data.sequences).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2] / "data" / "answers"
MAX_BYTES = 30 * 2 ** 20


def root() -> pathlib.Path:
  """data/answers in the checkout (or SPECJAX_ANSWERS)."""
  env = os.environ.get("SPECJAX_ANSWERS")
  return pathlib.Path(env) if env else ROOT


def prompt_sha(ids) -> str:
  return hashlib.sha1(np.asarray(ids, np.int32).tobytes()).hexdigest()


def directory(fingerprint: str, answer_tokens: int, base=None) -> pathlib.Path:
  return pathlib.Path(base or root()) / fingerprint / f"a{answer_tokens}"


def read(d: pathlib.Path) -> dict[str, tuple[str, list[int]]]:
  """id -> (prompt sha, answer token ids) of every shard in d (a later shard wins a repeated id)."""
  out = {}
  for f in sorted(pathlib.Path(d).glob("shard-*.npz")):
    with np.load(f, allow_pickle=False) as z:
      ids, shas, off, tok = z["ids"], z["prompt_sha"], z["offsets"], z["tokens"]
    for i in range(len(ids)):
      out[str(ids[i])] = (str(shas[i]), tok[off[i]:off[i + 1]].astype(np.int64).tolist())
  return out


def write_shard(d: pathlib.Path, rows: list[dict]) -> pathlib.Path | None:
  """rows {"id", "prompt": ids, "answer": ids} -> one shard in d (None for no rows)."""
  if not rows:
    return None
  d.mkdir(parents=True, exist_ok=True)
  answers = [np.asarray(r["answer"], np.int64) for r in rows]
  big = any(len(a) and a.max() >= 2 ** 16 for a in answers)
  cols = {"ids": np.array([str(r["id"]) for r in rows]), "prompt_sha": np.array([prompt_sha(r["prompt"]) for r in rows]),
          "offsets": np.concatenate([[0], np.cumsum([len(a) for a in answers])]).astype(np.int64),
          "tokens": (np.concatenate(answers) if answers else np.zeros(0)).astype(np.int32 if big else np.uint16)}
  key = hashlib.sha1(b"".join(c.tobytes() for c in cols.values())).hexdigest()[:16]
  f = d / f"shard-{key}.npz"
  tmp = d / f".shard-{key}.tmp.npz"
  np.savez_compressed(tmp, **cols)
  os.replace(tmp, f)
  return f


def total_bytes(base=None) -> int:
  b = pathlib.Path(base or root())
  return sum(f.stat().st_size for f in b.rglob("shard-*.npz")) if b.exists() else 0


def matching(items: list[dict], stored: dict) -> list[dict]:
  """The encoded items (data.encode) that have a stored answer for the same prompt tokens, as sequences."""
  out = []
  for it in items:
    s = stored.get(it["id"])
    if s is not None and s[0] == prompt_sha(it["prompt"]):
      out.append({"id": it["id"], "prompt": it["prompt"], "answer": s[1]})
  return out


PACKAGED = pathlib.Path(__file__).resolve().parents[1] / "data" / "mix.jsonl.gz"


def load_mix(path=PACKAGED) -> list[dict]:
  """The shipped prompt mix (or another file written by specjax.train.mix.write)."""
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [json.loads(l) for l in f if l.strip()]
