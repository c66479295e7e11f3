"""Drafter-default sweep: tokens/s and tau per drafter setting on 12 Spec-Bench dev prompts
(2 per category group: the 3rd and 4th of each; the Spec-Bench run uses the first 3, so one overlaps),
128 new tokens, batch 1, greedy, default model.

    python benchmarks/sweep_defaults.py [PROMPTS.jsonl]
"""
import json, sys
import specjax
t = specjax.load("default")
rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/specbench/dev.jsonl")]
groups = {}
mt = {"writing","roleplay","reasoning","math","coding","extraction","stem","humanities"}
for r in rows:
  g = "mt_bench" if r["category"] in mt else r["category"]
  groups.setdefault(g, []).append(r["turns"][0])
prompts = [(g, p) for g, ps in groups.items() for p in ps[2:4]]   # 2 per group, not the first ones
configs = [("none", {}), ("pld", dict(num_tokens=4)), ("pld", dict(num_tokens=7)), ("pld", dict(num_tokens=7, min_ngram=2)),
           ("lookahead", dict(ngram=3, window=2, guesses=1)), ("lookahead", dict(ngram=3, window=1, guesses=2))]
for name, opts in configs:   # warm-up compile
  specjax.generate(t, [prompts[0][1]], max_new_tokens=128, drafter=name, **opts)
res = {}
for name, opts in configs:
  tot_new = tot_fw = 0; wall = 0.0; per = {}
  for g, p in prompts:
    out = specjax.generate(t, [p], max_new_tokens=128, drafter=name, **opts)
    tot_new += out.new_tokens[0]; tot_fw += out.target_forwards[0]; wall += out.wall_s
    d = per.setdefault(g, [0, 0, 0.0]); d[0] += out.new_tokens[0]; d[1] += out.target_forwards[0]; d[2] += out.wall_s
  key = name + json.dumps(opts)
  res[key] = dict(tps=tot_new / wall, tau=tot_new / tot_fw, per={g: (round(v[0]/v[2],1), round(v[0]/v[1],2)) for g, v in per.items()})
  base = res["none{}"]["tps"]
  print(f"{key:60s} tok/s {res[key]['tps']:5.1f} speedup {res[key]['tps']/base:4.2f} tau {res[key]['tau']:4.2f} {res[key]['per']}", flush=True)
