"""Self-distilled answers kept in the repository, so training data accumulates across machines and runs.

    python -m specjax.train.answers [--max-prompts N] [--heldout-prompts N] [--batch B] [--minutes M] [--model M]

The target's greedy answers (up to `answer_tokens`, stopping at EOS) to the training prompts, made in
batches by the same compiled generator `specjax train` uses, stored as compressed shards:

    data/answers/<target fingerprint>/a<answer_tokens>/shard-<content hash>.npz
      ids [n] str             record ids of the prompt mix (specjax.train.data.Record.id)
      prompt_sha [n] str      sha1 of the prompt's token ids (chat template applied, truncated): an answer is
                              used only for the same prompt tokens, so a changed template or truncation
                              never pairs an answer with another prompt
      offsets [n + 1] int64   answer i is tokens[offsets[i]:offsets[i + 1]]
      tokens [m] uint16       the answer tokens (int32 for a vocabulary over 65536)

Shards are named by their content, so shards made on different machines merge by copying files; a
killed run loses at most its unwritten shard, and a rerun skips every prompt already answered.
`specjax train` (data.sequences) takes every stored answer that matches before generating any.
The total is capped (MAX_BYTES, 30 MB) to keep the repository small.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import time

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


def generate(target, items: list[dict], *, answer_tokens: int = 256, batch_size: int = 16, shard_size: int = 128,
             window: int = 1024, deadline: float | None = None, base=None, max_bytes: int = MAX_BYTES,
             progress=print) -> int:
  """Answers every encoded item (data.encode) not yet stored under data/answers/<fingerprint>/, in batches
  of similar prompt lengths (within windows of `window` items), a shard written every `shard_size` answers. Stops starting batches after
  `deadline` (time.time()) or once the store holds max_bytes. Returns how many answers were added."""
  from specjax import api
  d = directory(target.fingerprint, answer_tokens, base)
  have = {k for k, (sha, _) in read(d).items()}
  todo = [it for it in items if it["id"] not in have]
  # In the items' order, window by window (so a run stopped early has answered a balanced prefix of the
  # mix), sorted by length within a window (similar lengths share a padded shape and a compile).
  todo = [it for w in range(0, len(todo), window) for it in sorted(todo[w:w + window], key=lambda it: len(it["prompt"]))]
  pending, added, tokens, t0 = [], 0, 0, time.perf_counter()
  for s in range(0, len(todo), batch_size):
    if (deadline is not None and time.time() > deadline) or total_bytes(base) >= max_bytes:
      break
    chunk = todo[s:s + batch_size]
    g = api.generate(target, [it["prompt"] for it in chunk], max_new_tokens=answer_tokens, drafter="none")
    pending += [{"id": it["id"], "prompt": it["prompt"], "answer": out} for it, out in zip(chunk, g.token_ids)]
    tokens += sum(g.new_tokens)
    if len(pending) >= shard_size:
      write_shard(d, pending)
      added += len(pending)
      pending = []
    if progress:
      progress(f"answers: {s + len(chunk)}/{len(todo)} prompts, {tokens} tokens, "
               f"{tokens / (time.perf_counter() - t0):.0f} tokens/s, {total_bytes(base) / 1e6:.1f} MB stored")
  write_shard(d, pending)
  return added + len(pending)


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m specjax.train.answers", description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default="default")
  ap.add_argument("--prompts", default=None, help="prompt files (default: the shipped mix), as `specjax train --prompts`")
  ap.add_argument("--max-prompts", type=int, default=2000, help="training prompts to answer (the first N of the mix)")
  ap.add_argument("--heldout-prompts", type=int, default=100)
  ap.add_argument("--answer-tokens", type=int, default=256)
  ap.add_argument("--max-prompt-tokens", type=int, default=256)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--shard-size", type=int, default=128)
  ap.add_argument("--minutes", type=float, default=None, help="stop starting batches after this long")
  a = ap.parse_args(argv)
  import specjax
  from specjax.train import data
  target = specjax.load(a.model)
  recs = data.training_prompts(a.prompts)
  # Held-out prompts first: few, and every drafter's evaluation needs them.
  items = data.encode(target, data.select(recs, a.heldout_prompts, heldout=True) +
                      data.select(recs, a.max_prompts, heldout=False), max_prompt_tokens=a.max_prompt_tokens)
  deadline = None if a.minutes is None else time.time() + 60 * a.minutes
  n = generate(target, items, answer_tokens=a.answer_tokens, batch_size=a.batch, shard_size=a.shard_size,
               deadline=deadline)
  print(f"added {n} answers under {directory(target.fingerprint, a.answer_tokens)} "
        f"({total_bytes() / 1e6:.1f} MB in data/answers)")


if __name__ == "__main__":
  main()
