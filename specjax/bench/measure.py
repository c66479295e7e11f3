"""Measuring: each (method, batch) generated and turned into records, appended to the records file as they
are made; the peers (Hugging Face, llama.cpp) run beside the drafters, a failed one dropped, the run going on."""
from __future__ import annotations

import pathlib
import sys

from tqdm import tqdm

from specjax.bench import llamacpp
from specjax.bench.aggregate import BASELINE, key
from specjax.bench.peers import PEERS, HFPeer, PeerError
from specjax.bench.plan import Plan
from specjax.io import records as records_io
from specjax.io.prompts import Prompt
from specjax.program import Program, Settings


class Peers:
  """The peers with work left: run(method, ids, max_new_tokens) -> {token_ids, new_tokens, target_forwards,
  wall_s}, or None once that peer has failed (its error kept in `errors` and shown as it happens)."""

  def __init__(self, busy: list[str], model_name: str, target, plan: Plan, n_ctx: int, temperature, seed):
    self.runners, self.workers, self.errors = {}, {}, {}
    lookup = plan.lookup
    if set(busy) & set(PEERS["hf"]):
      hf = HFPeer(model_name, eos_ids=target.tokenizer.eos_ids)
      for m in PEERS["hf"]:
        self.runners[m] = lambda x, n, pl=lookup if m == "hf_pld" else None: hf.run(
            x, max_new_tokens=n, temperature=temperature, seed=seed, lookup=pl)
    if set(busy) & set(PEERS["llamacpp"]):
      self.workers = llamacpp.start([m for m in busy if m in PEERS["llamacpp"]], model_name,
                                    eos_ids=target.tokenizer.eos_ids, n_ctx=n_ctx, lookup=lookup,
                                    temperature=temperature, seed=seed, errors=self.errors)
      self.runners.update({m: w.run for m, w in self.workers.items()})

  def run(self, m, x, n):
    if m in self.errors:
      return None
    try:
      return self.runners[m](x, n)
    except PeerError as e:
      self.errors[m] = str(e)
      print(f"specjax bench: {e}; going on without {m}", file=sys.stderr)
      return None

  def close(self):
    for w in self.workers.values():
      w.close()


def drafter_records(program: Program, settings: Settings, m: str, batch: list[Prompt], ids: dict,
                    repeats: int = 1) -> list[dict]:
  """One generate call over the batch (a partly recorded batch, rare, is measured again whole), `repeats`
  times back to back and the fastest kept (every call must give the same tokens); its wall time shared among
  the rows in proportion to their new tokens."""
  x = [ids[str(p.id)] for p in batch]
  g = program.generate(x, settings)
  for _ in range(repeats - 1):
    again = program.generate(x, settings)
    if again.token_ids != g.token_ids:
      raise RuntimeError(f"{m}: a repeated call on prompts {[p.id for p in batch]} gave other tokens")
    g = min(g, again, key=lambda r: r.wall_s)
  total_new = max(sum(g.new_tokens), 1)
  out = []
  for i, p in enumerate(batch):
    share = g.wall_s * g.new_tokens[i] / total_new
    out.append(dict(
        method=m, id=p.id, category=p.category, group=p.group, prompt_tokens=len(ids[str(p.id)]),
        new_tokens=g.new_tokens[i], target_forwards=g.target_forwards[i], tau=g.tau[i],
        wall_s=share, batch_wall_s=g.wall_s, batch_prefill_s=g.prefill_s, batch_size=len(batch),
        compile_s=g.compile_s,
        tokens_per_s=g.new_tokens[i] / share if share > 0 else None,
        accepted_hist=g.accepted_hist[i], token_ids=g.token_ids[i], text=g.texts[i], budget=g.budget))
  return out


def peer_records(peers: Peers, tokenizer, m: str, prompts: list[Prompt], ids: dict, max_new_tokens) -> list[dict]:
  out = []
  for p in prompts:
    r = peers.run(m, ids[str(p.id)], max_new_tokens)
    if r is None:
      break
    out.append(dict(
        method=m, id=p.id, category=p.category, group=p.group, prompt_tokens=len(ids[str(p.id)]),
        new_tokens=r["new_tokens"], target_forwards=r["target_forwards"],
        tau=r["new_tokens"] / max(r["target_forwards"], 1), wall_s=r["wall_s"],
        batch_wall_s=r["wall_s"], batch_size=1, compile_s=0.0,
        tokens_per_s=r["new_tokens"] / r["wall_s"] if r["wall_s"] > 0 else None,
        accepted_hist=None, token_ids=r["token_ids"], text=tokenizer.decode(r["token_ids"])))
  return out


def warm_up(program: Program, plan: Plan, peers: Peers, prompt_ids: list[list[int]], methods: list[str]):
  """One full-length call per method that still has work, so the program (and buffer) the timed calls run is
  the one warmed, not a shorter one; tree_budget="auto" measures its step costs here."""
  for m in methods:
    if m in plan.drafters:
      program.generate(prompt_ids, plan.settings[m].replace(time_prefill=False))
    else:
      peers.run(m, prompt_ids[0], plan.settings[BASELINE].max_new_tokens)


def measure(program: Program, plan: Plan, peers: Peers, work: list[list[Prompt]], ids: dict, records: dict,
            stamp, rec_path: pathlib.Path, progress: bool, repeats: int = 1) -> None:
  """Every (method, prompt) not in `records` yet, measured and appended to the records file as it is made;
  stamp(record) -> the fields that tie a record to its settings and prompt. repeats: timed runs of each drafter
  call, the fastest kept (the peers run once)."""
  todo = lambda m, batch: [p for p in batch if key(m, p.id) not in records]
  selected = [p for b in work for p in b]
  writer = records_io.RecordLog(rec_path)
  done_before = sum(1 for p in selected if all(key(m, p.id) in records for m in plan.methods))
  bar = tqdm(total=len(selected), initial=done_before, unit="prompt", desc="bench", file=sys.stderr,
             disable=not progress, dynamic_ncols=True)
  try:
    for b_index, batch in enumerate(work):
      if not any(todo(m, batch) for m in plan.methods):
        continue
      # Methods interleaved per batch, their order rotated each batch: none is always first after a switch.
      r = b_index % len(plan.methods)
      for m in plan.methods[r:] + plan.methods[:r]:
        if not todo(m, batch):
          continue
        bar.set_postfix_str(m, refresh=True)
        if m in plan.drafters:
          new_recs = drafter_records(program, plan.settings[m], m, batch, ids, repeats)
        else:
          new_recs = peer_records(peers, program.target.tokenizer, m, todo(m, batch), ids,
                                  plan.settings[BASELINE].max_new_tokens)
        for rec in new_recs:
          rec.update(stamp(rec))
          records[key(m, rec["id"])] = rec
        writer.write(new_recs)
      bar.update(len(batch))
  finally:
    bar.close()
    writer.close()
    peers.close()
