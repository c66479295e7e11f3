"""Aggregation of bench records: per method and category group, over the prompts both the method and the
baseline have records for (see specjax.bench.run for the figures), and greedy divergences classified by the
target's top-2 logit gap."""
from __future__ import annotations

from specjax import program
from specjax.io.prompts import Prompt

GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
OVERALL = "overall"
BASELINE = "none"
# A greedy divergence whose top-2 logit gap (at the first differing token) is at most this is a
# near-tie (float rounding of a T-node vs a one-node forward), counted apart from real mismatches.
NEAR_TIE_GAP = 1e-3


def key(method: str, pid) -> tuple[str, str]:
  """The records map's key of (method, prompt id)."""
  return method, str(pid)


def ordered_groups(groups) -> list[str]:
  present = set(groups)
  return [g for g in GROUPS if g in present] + sorted(present - set(GROUPS))


def divergence_gaps(target, records: dict, prompts: list[Prompt], methods: list[str], ids: dict) -> dict:
  """(method, prompt) -> top-2 logit gap of the target at the first token where the method's greedy
  output leaves the baseline's, for every output that differs."""
  gaps = {}
  for m in methods:
    for p in prompts:
      r, b = records.get(key(m, p.id)), records.get(key(BASELINE, p.id))
      if m == BASELINE or r is None or b is None:
        continue
      d = program.divergence(target, ids[str(p.id)], b["token_ids"], r["token_ids"])
      if d is not None:
        gaps[key(m, p.id)] = d["gap"]
  return gaps


def _totals(recs: list[dict]) -> dict:
  new = sum(r["new_tokens"] for r in recs)
  fw = sum(r["target_forwards"] for r in recs)
  wall = sum(r["wall_s"] for r in recs)
  return {"prompts": len(recs), "new_tokens": new, "target_forwards": fw, "wall_s": wall,
          "tokens_per_s": new / wall if wall > 0 else None, "tau": new / fw if fw else None}


def aggregate(records: dict, prompts: list[Prompt], methods: list[str], *, greedy: bool,
              gaps: dict | None = None) -> dict:
  """method -> group -> figures (see the module docstring), over the selected prompts."""
  groups = ordered_groups(p.group for p in prompts) + [OVERALL]
  out = {}
  for m in methods:
    out[m] = {}
    for g in groups:
      ps = [p for p in prompts if g == OVERALL or p.group == g]
      pairs = [(records[key(m, p.id)], records[key(BASELINE, p.id)]) for p in ps
               if key(m, p.id) in records and key(BASELINE, p.id) in records]
      mine, base = _totals([a for a, _ in pairs]), _totals([b for _, b in pairs])
      speedup = (mine["tokens_per_s"] / base["tokens_per_s"]
                 if mine["tokens_per_s"] and base["tokens_per_s"] else None)
      ident = None
      if greedy:
        ident = {"identical": sum(a["token_ids"] == b["token_ids"] for a, b in pairs), "total": len(pairs),
                 "near_tie": sum(1 for p in ps if (gaps or {}).get(key(m, p.id), float("inf")) <= NEAR_TIE_GAP),
                 "max_gap": max((gaps[key(m, p.id)] for p in ps if key(m, p.id) in (gaps or {})), default=None)}
      out[m][g] = {**mine, "speedup": speedup, "identical_to_baseline": ident,
                   "baseline_tokens_per_s": base["tokens_per_s"]}
  return out


def prompt_records(records: dict, prompts: list[Prompt], methods: list[str], *, greedy: bool,
                   gaps: dict | None = None) -> list[dict]:
  out = []
  for m in methods:
    for p in prompts:
      r = records.get(key(m, p.id))
      if r is None:
        continue
      b = records.get(key(BASELINE, p.id))
      d = program.first_diff(r["token_ids"], b["token_ids"]) if (b is not None and greedy) else None
      row = {k: v for k, v in r.items() if k not in ("token_ids", "settings", "prompt_sha")}
      row["identical_to_baseline"] = (d is None) if (b is not None and greedy) else None
      row["first_diff"] = d
      row["divergence_gap"] = (gaps or {}).get(key(m, p.id))
      out.append(row)
  return out
