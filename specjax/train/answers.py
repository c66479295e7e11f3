"""Makes the self-distilled answers that specjax.train.store keeps in the repository.

    python -m specjax.train.answers [--max-prompts N] [--heldout-prompts N] [--batch B] [--minutes M] [--model M]

The target's greedy answers (up to `answer_tokens`, stopping at EOS) to the training prompts, made in
batches by the same compiled program `specjax train` uses, written as shards (format: specjax.train.store).
A rerun skips every prompt already answered; `specjax train` takes every stored answer that matches
before generating any.
"""
from __future__ import annotations

import argparse
import time

from specjax.train.store import (MAX_BYTES, directory, matching, prompt_sha, read, root,  # noqa: F401
                                   total_bytes, write_shard)

def generate(target, items: list[dict], *, answer_tokens: int = 256, batch_size: int = 16, shard_size: int = 128,
             window: int = 1024, deadline: float | None = None, base=None, max_bytes: int = MAX_BYTES,
             progress=print) -> int:
  """Answers every encoded item (data.encode) not yet stored under data/answers/<fingerprint>/, in batches
  of similar prompt lengths (within windows of `window` items), a shard written every `shard_size` answers. Stops starting batches after
  `deadline` (time.time()) or once the store holds max_bytes. Returns how many answers were added."""
  from specjax.program import Program, Settings, encode_prompts
  program, settings = Program(target), Settings.make(max_new_tokens=answer_tokens)   # greedy, plain decoding
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
    g = program.generate(encode_prompts(target, [it["prompt"] for it in chunk], True, False), settings)
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
  from specjax.io import load
  from specjax.train import data
  target = load(a.model)
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
