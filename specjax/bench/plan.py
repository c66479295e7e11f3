"""A benchmark's plan: the prompts selected and batched, the methods, each drafter's Settings (its drafter
built once), every argument checked before a model loads."""
from __future__ import annotations

import dataclasses

from specjax.bench import llamacpp
from specjax.bench.aggregate import BASELINE, ordered_groups
from specjax.bench.peers import PEERS
from specjax.checks import positive_int
from specjax.drafters import registry
from specjax.io.prompts import Prompt, read_prompts
from specjax.program import Settings, check_tree_budget


def select(prompts: list[Prompt], *, limit: int | None = None, per_category: int | None = None) -> list[Prompt]:
  """per_category: the first K of each category group (file order); then limit: the first K of those."""
  for name, v in (("limit", limit), ("per_category", per_category)):
    if v is not None:
      positive_int(v, name)
  out = list(prompts)
  if per_category is not None:
    counts: dict[str, int] = {}
    kept = []
    for p in out:
      if counts.get(p.group, 0) < per_category:
        counts[p.group] = counts.get(p.group, 0) + 1
        kept.append(p)
    out = kept
  if limit is not None:
    out = out[:limit]
  return out


def batches(prompts: list[Prompt], batch_size: int) -> list[list[Prompt]]:
  """Consecutive chunks of at most batch_size prompts, never mixing category groups."""
  by_group: dict[str, list[Prompt]] = {}
  for p in prompts:
    by_group.setdefault(p.group, []).append(p)
  out = []
  for g in ordered_groups(by_group):
    ps = by_group[g]
    out += [ps[i:i + batch_size] for i in range(0, len(ps), batch_size)]
  return out


@dataclasses.dataclass
class Plan:
  """A benchmark's checked arguments: prompts, methods, and each drafter's Settings (its drafter built once)."""
  selected: list[Prompt]
  prompts_total: int
  drafters: list[str]
  peers: list[str]
  methods: list[str]
  settings: dict[str, Settings]         # drafter name -> its settings (the baseline's: plain decoding)
  drafter_options: dict
  lookup: tuple[int, int]               # the peers' prompt lookup: (num_tokens, max_ngram) of pld
  tree_budget: str                      # the drafters' ("fixed" or "auto"); the baseline's is always fixed


def make_plan(prompts, *, drafters, limit, per_category, peers, drafter_options, max_new_tokens, temperature, seed,
              chat, tree_budget) -> Plan:
  """Every argument checked before a model loads."""
  common = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, chat=chat, time_prefill=True)
  Settings.make(**common)
  tree_budget = check_tree_budget(tree_budget)
  all_prompts = read_prompts(prompts) if not isinstance(prompts, list) else list(prompts)
  selected = select(all_prompts, limit=limit, per_category=per_category)
  if not selected:
    raise ValueError("no prompts selected")
  if len({str(p.id) for p in selected}) != len(selected):
    raise ValueError("prompt ids must be unique")
  drafters = [d for d in dict.fromkeys([BASELINE, *drafters])]
  known = registry.names()
  for d in drafters:
    if d.partition(":")[0] not in known:      # "medusa:PATH" names a checkpoint of a known drafter
      raise ValueError(f"unknown drafter {d!r}; choose from {', '.join(known)}")
  peers = list(dict.fromkeys(peers or ()))
  for p in peers:
    if p not in PEERS:
      raise ValueError(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
  if "llamacpp" in peers:
    llamacpp.require()
  drafter_options = {k: dict(v) for k, v in (drafter_options or {}).items()}
  for name in drafter_options:
    if name not in drafters:
      raise ValueError(f"options given for drafter {name!r}, which is not benchmarked")
  # The baseline is plain decoding whatever the tree budget; a drafter with nothing measured fails now.
  settings = {d: Settings.make(drafter=d, drafter_options=drafter_options.get(d), **common,
                               tree_budget=tree_budget if d != BASELINE else "fixed") for d in drafters}
  pld = settings["pld"].drafter if "pld" in settings else registry.make("pld", **drafter_options.get("pld", {}))
  return Plan(selected, len(all_prompts), drafters, peers, drafters + [m for p in peers for m in PEERS[p]],
              settings, drafter_options, (pld.num_tokens, pld.max_ngram), tree_budget)
