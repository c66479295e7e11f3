"""The benchmark harness: selection, aggregation, reports, crash-safe resume, and the Hugging Face peers.

Runs on tiny random targets (specjax.testing.tiny_target, and a tiny transformers Llama saved to a
directory for `--peers hf`), with Spec-Bench-like JSONL files written to tmp_path."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib

import pytest

from specjax import api, cli
from specjax.bench import aggregate as agg_lib
from specjax.bench import plan as plan_lib
from specjax.bench import run as run_lib
from specjax.bench import run_bench
from specjax.drafters import registry
from specjax.io.prompts import Prompt, group_of, read_prompts
from specjax.program import Program
from specjax.testing import tiny_target
from test_cli import write_jsonl_bytes

CHAT = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
CATEGORIES = ["writing", "coding", "translation", "summarization", "qa", "math_reasoning", "rag"]
GROUPS = ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag", "overall"]


@pytest.fixture(scope="module")
def tiny_chat():
  t = tiny_target(seed=0, scale=10.0)
  t.tokenizer.chat_template = CHAT
  return t


def specbench_rows(prefix="t", per_cat=2, vocab=60):
  """Spec-Bench-shaped rows, `per_cat` for each category, with some repetition for prompt lookup."""
  rows, qid = [], 100
  for k in range(per_cat):
    for c in CATEGORIES:
      words = [f"{prefix}{(qid * 7 + j * 3) % vocab + 2}" for j in range(6)]
      rows.append({"question_id": qid, "category": c, "turns": [" ".join(words * 2), "second turn"]})
      qid += 1
  return rows


def write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture
def prompts_file(tmp_path):
  return write_jsonl(tmp_path / "dev.jsonl", specbench_rows())


def read_lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ----------------------------------------------------------------------------- selection and maths

def test_read_and_select(prompts_file):
  ps = read_prompts(prompts_file)
  assert len(ps) == 14 and ps[0].id == 100 and ps[0].category == "writing" and ps[0].group == "mt_bench"
  assert ps[0].text.startswith("t") and "second turn" not in ps[0].text
  one = plan_lib.select(ps, per_category=1)
  assert [p.group for p in one] == ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]
  assert [p.id for p in one] == [100, 102, 103, 104, 105, 106]
  assert len(plan_lib.select(ps, per_category=2)) == 12          # mt_bench holds 4 rows: 2 kept
  assert [p.id for p in plan_lib.select(ps, limit=3)] == [100, 101, 102]
  assert [p.id for p in plan_lib.select(ps, per_category=1, limit=2)] == [100, 102]
  with pytest.raises(ValueError):
    plan_lib.select(ps, limit=0)
  assert group_of("humanities") == "mt_bench" and group_of("rag") == "rag"


def test_batches_never_mix_groups():
  ps = [Prompt(i, "x", c, group_of(c)) for i, c in enumerate(["qa", "writing", "qa", "rag", "stem", "qa"])]
  bs = plan_lib.batches(ps, 2)
  assert [[p.id for p in b] for b in bs] == [[1, 4], [0, 2], [5], [3]]


def _rec(method, pid, new, fw, wall, toks):
  return {"method": method, "id": pid, "new_tokens": new, "target_forwards": fw, "wall_s": wall, "token_ids": toks}


def test_aggregate_is_ratio_of_sums():
  ps = [Prompt(1, "a", "qa", "qa"), Prompt(2, "b", "qa", "qa"), Prompt(3, "c", "rag", "rag")]
  recs = [_rec("none", 1, 10, 10, 1.0, [1] * 10), _rec("none", 2, 30, 30, 3.0, [2] * 30),
          _rec("none", 3, 20, 20, 2.0, [3] * 20),
          _rec("pld", 1, 10, 5, 0.5, [1] * 10), _rec("pld", 2, 30, 10, 1.0, [2] * 29 + [9]),
          _rec("pld", 3, 20, 20, 4.0, [3] * 20)]
  records = {agg_lib.key(r["method"], r["id"]): r for r in recs}
  agg = agg_lib.aggregate(records, ps, ["none", "pld"], greedy=True)
  assert list(agg["pld"]) == ["qa", "rag", "overall"]
  qa = agg["pld"]["qa"]
  assert qa["tokens_per_s"] == pytest.approx(40 / 1.5) and qa["tau"] == pytest.approx(40 / 15)
  assert qa["speedup"] == pytest.approx((40 / 1.5) / (40 / 4.0))
  assert qa["identical_to_baseline"] == {"identical": 1, "total": 2, "near_tie": 0, "max_gap": None}
  ov = agg["pld"]["overall"]
  assert ov["speedup"] == pytest.approx((60 / 5.5) / (60 / 6.0))    # not the mean of per-prompt ratios
  assert ov["identical_to_baseline"] == {"identical": 2, "total": 3, "near_tie": 0, "max_gap": None}
  assert agg["none"]["overall"]["speedup"] == pytest.approx(1.0)
  assert agg_lib.aggregate(records, ps, ["pld"], greedy=False)["pld"]["qa"]["identical_to_baseline"] is None
  assert api.first_diff([1, 2, 3], [1, 2, 4]) == 2 and api.first_diff([1], [1]) is None
  assert api.first_diff([1, 2], [1]) == 1


# ----------------------------------------------------------------------------- full runs on a tiny target

def test_bench_writes_results(prompts_file, tmp_path, tiny_chat):
  out = tmp_path / "out"
  res = run_bench(prompts_file, out=out, drafters=["pld", "lookahead"], target=tiny_chat, max_new_tokens=6,
                  per_category=1, progress=False, command=["specjax", "bench"])
  data = json.loads((out / "results.json").read_text())
  assert data["methods"] == ["none", "pld", "lookahead"] and data["baseline"] == "none"
  assert data["groups"] == GROUPS
  for m in data["methods"]:
    assert list(data["results"][m]) == GROUPS
    for g in GROUPS:
      a = data["results"][m][g]
      n = 6 if g == "overall" else 1
      assert a["prompts"] == n and a["identical_to_baseline"]["total"] == n
      assert a["speedup"] > 0 and a["tokens_per_s"] > 0 and a["tau"] >= 1.0
      assert a["tau"] == pytest.approx(a["new_tokens"] / a["target_forwards"])
  assert data["results"]["none"]["overall"]["speedup"] == pytest.approx(1.0)
  assert data["results"]["none"]["overall"]["identical_to_baseline"] == {"identical": 6, "total": 6, "near_tie": 0, "max_gap": None}
  # Greedy speculative decoding is lossless: the drafters reproduce the baseline.
  assert data["results"]["pld"]["overall"]["identical_to_baseline"] == {"identical": 6, "total": 6, "near_tie": 0, "max_gap": None}
  m = data["machine"]
  assert m["cpu_count"] >= 1 and m["jax"] and m["devices"] and m["platform"]
  c = data["config"]
  assert c["max_new_tokens"] == 6 and c["per_category"] == 1 and c["command"] == ["specjax", "bench"]
  assert len(data["records"]) == 18
  assert {r["id"] for r in data["records"]} == {100, 102, 103, 104, 105, 106}
  assert all(r["identical_to_baseline"] is True for r in data["records"] if r["method"] == "pld")
  assert res["results"] == data["results"]
  md = (out / "results.md").read_text()
  header = next(line for line in md.splitlines() if line.startswith("| method"))
  assert header == "| method | " + " | ".join(GROUPS) + " |"
  assert "| pld | " in md and "6/6" in md and "x (" in md
  assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(read_lines(out / "records.jsonl")) == 18


def test_resume_after_crash(prompts_file, tmp_path, tiny_chat, monkeypatch):
  out = tmp_path / "out"
  real = Program.generate
  calls = []

  def crashing(*a, **kw):
    calls.append(a[-1].drafter.name)          # (program, prompt ids, settings)
    if len(calls) == 2 + 6:               # 2 warm-ups, 5 measurements, then a crash in the 6th
      raise RuntimeError("simulated crash")
    return real(*a, **kw)

  monkeypatch.setattr(Program, "generate", crashing)
  kw = dict(out=out, drafters=["pld"], target=tiny_chat, max_new_tokens=5, per_category=1, progress=False)
  with pytest.raises(RuntimeError, match="simulated crash"):
    run_bench(prompts_file, **kw)
  recs = read_lines(out / "records.jsonl")
  assert len(recs) == 5                                   # everything finished before the crash was kept
  assert [(r["method"], r["id"]) for r in recs][:2] == [("none", 100), ("pld", 100)]

  monkeypatch.setattr(Program, "generate", real)
  run_bench(prompts_file, **kw)
  recs = read_lines(out / "records.jsonl")
  assert len(recs) == 12
  assert len({(r["method"], r["id"]) for r in recs}) == 12      # nothing measured twice

  counted = []
  monkeypatch.setattr(Program, "generate", lambda *a, **k: counted.append(1) or real(*a, **k))
  data = run_bench(prompts_file, **kw)                            # all done: only the reports are rewritten
  assert counted == []
  assert len(read_lines(out / "records.jsonl")) == 12
  assert data["results"]["pld"]["overall"]["identical_to_baseline"]["total"] == 6


def test_resume_drops_torn_line_once_and_extends(prompts_file, tmp_path, tiny_chat, capsys):
  out = tmp_path / "out"
  kw = dict(out=out, drafters=[], target=tiny_chat, max_new_tokens=4, progress=False)
  run_bench(prompts_file, limit=2, **kw)
  with (out / "records.jsonl").open("a") as f:
    f.write('{"method": "none", "id": 10')                        # a write cut short by a crash
  data = run_bench(prompts_file, limit=4, **kw)
  assert capsys.readouterr().err.count("removed 1 unreadable line") == 1
  lines = (out / "records.jsonl").read_text().splitlines()
  assert [json.loads(line)["id"] for line in lines] == [100, 101, 102, 103]   # the torn line is gone
  assert data["results"]["none"]["overall"]["prompts"] == 4
  run_bench(prompts_file, limit=4, **kw)                          # a clean file: no warning any more
  assert "unreadable" not in capsys.readouterr().err


def test_resume_refuses_other_settings(prompts_file, tmp_path, tiny_chat):
  out = tmp_path / "out"
  kw = dict(out=out, drafters=[], target=tiny_chat, limit=1, progress=False)
  run_bench(prompts_file, max_new_tokens=4, **kw)
  with pytest.raises(ValueError, match="max_new_tokens"):
    run_bench(prompts_file, max_new_tokens=5, **kw)
  rows = specbench_rows()
  rows[0]["turns"][0] = "t5 t5 t5"
  with pytest.raises(ValueError, match="differs"):
    run_bench(write_jsonl(tmp_path / "other.jsonl", rows), max_new_tokens=4, **kw)


def test_repeats_keep_the_fastest_call(prompts_file, tmp_path, tiny_chat, monkeypatch):
  """--repeats K: each drafter call runs K times back to back and the record keeps the fastest; the setting is
  part of the records' settings (a resume with another K is refused) and a repeat with other tokens stops the run."""
  real, walls = Program.generate, itertools.cycle([5.0, 1.0, 3.0])
  monkeypatch.setattr(Program, "generate", lambda self, *a, **k: dataclasses.replace(real(self, *a, **k), wall_s=next(walls)))
  kw = dict(out=tmp_path / "o", drafters=["pld"], target=tiny_chat, max_new_tokens=6, limit=2, progress=False)
  res = run_bench(prompts_file, repeats=3, **kw)
  assert [r["wall_s"] for r in res["records"]] == [1.0] * 4 and res["config"]["repeats"] == 3
  assert "the fastest of 3 runs of each call" in (tmp_path / "o" / "results.md").read_text()
  with pytest.raises(ValueError, match="repeats"):
    run_bench(prompts_file, repeats=1, **{**kw, "limit": 3})
  flip = itertools.count()
  monkeypatch.setattr(Program, "generate", lambda self, *a, **k: (lambda g: g if next(flip) % 2 else dataclasses.replace(
      g, token_ids=[t + [0] for t in g.token_ids]))(real(self, *a, **k)))
  with pytest.raises(RuntimeError, match="other tokens"):
    run_bench(prompts_file, repeats=2, **{**kw, "out": tmp_path / "p"})


def test_sampling_has_no_identical_counts(prompts_file, tmp_path, tiny_chat):
  data = run_bench(prompts_file, out=tmp_path / "o", drafters=[], target=tiny_chat, max_new_tokens=4, limit=2,
                   temperature=0.8, progress=False)
  assert data["results"]["none"]["overall"]["identical_to_baseline"] is None
  assert "n/a (sampling)" in (tmp_path / "o" / "results.md").read_text()


def test_batched_bench(prompts_file, tmp_path, tiny_chat):
  data = run_bench(prompts_file, out=tmp_path / "o", drafters=["pld"], target=tiny_chat, max_new_tokens=5,
                   per_category=2, batch_size=2, progress=False)
  recs = read_lines(tmp_path / "o" / "records.jsonl")
  assert len(recs) == 24 and all(r["batch_size"] == 2 for r in recs)
  for m in ("none", "pld"):
    for g in GROUPS[:-1]:
      rs = [r for r in recs if r["method"] == m and r["group"] == g]
      assert len(rs) == 2
      # one batch per group: its wall time is shared so that the shares add up to the batch's
      assert sum(r["wall_s"] for r in rs) == pytest.approx(rs[0]["batch_wall_s"])
  assert data["results"]["pld"]["overall"]["identical_to_baseline"] == {"identical": 12, "total": 12, "near_tie": 0, "max_gap": None}


def test_cli_bench_with_monkeypatched_loader(prompts_file, tmp_path, tiny_chat, monkeypatch, capsys):
  monkeypatch.setattr(cli, "load_target", lambda model, dtype: tiny_chat)
  out = tmp_path / "out"
  code = cli.main(["bench", "--prompts", str(prompts_file), "--drafters", "none,pld", "--max-new-tokens", "4",
                   "--per-category", "1", "-O", "pld.num_tokens=3", "--out", str(out)])
  assert code == 0
  o, e = capsys.readouterr()
  assert "| pld |" in o and "bench" in e                        # the table on stdout, tqdm on stderr
  data = json.loads((out / "results.json").read_text())
  assert data["config"]["drafter_options"] == {"pld": {"num_tokens": 3}}
  assert data["config"]["command"][:2] == ["specjax", "bench"]


# ----------------------------------------------------------------------------- Hugging Face peers

def make_tiny_hf_dir(d: pathlib.Path, vocab: int = 64):
  """A tiny random transformers Llama saved with save_pretrained, with a word-level tokenizer "w0".."w63"
  (eos w1) and a trivial chat template."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, tie_word_embeddings=True)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(cfg).eval()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():                   # spread-out logits: greedy ties between libraries are unlikely
    for name, p in model.named_parameters():
      if not name.endswith("norm.weight"):
        p.copy_((1.0 if "embed" in name else 0.3) * torch.randn(p.shape, generator=g))
  model.save_pretrained(d)
  tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(vocab)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w0", "eos_token": "w1", "chat_template": CHAT}))


def test_cli_bench_hf_peers(tmp_path, capsys):
  model_dir = tmp_path / "tiny_hf"
  model_dir.mkdir()
  make_tiny_hf_dir(model_dir)
  prompts = write_jsonl(tmp_path / "dev.jsonl", specbench_rows(prefix="w"))
  out = tmp_path / "out"
  code = cli.main(["bench", "--prompts", str(prompts), "--model", str(model_dir), "--drafters", "pld",
                   "--peers", "hf", "--per-category", "1", "--max-new-tokens", "6", "--no-progress",
                   "--out", str(out)])
  assert code == 0
  data = json.loads((out / "results.json").read_text())
  assert data["methods"] == ["none", "pld", "hf", "hf_pld"]
  assert data["config"]["hf_prompt_lookup"] == {"prompt_lookup_num_tokens": 4, "max_matching_ngram_size": 3}
  assert "torch" in data["machine"]
  for m in ("hf", "hf_pld"):
    ov = data["results"][m]["overall"]
    assert ov["prompts"] == 6 and ov["speedup"] > 0
    # Same weights, same prompt ids: transformers' greedy tokens match ours (a float32 near-tie may flip one).
    assert ov["identical_to_baseline"]["total"] == 6 and ov["identical_to_baseline"]["identical"] >= 5
  hf_recs = [r for r in data["records"] if r["method"] == "hf"]
  assert all(r["target_forwards"] == r["new_tokens"] for r in hf_recs)    # one forward per token
  md = (out / "results.md").read_text()
  assert "| hf |" in md and "| hf_pld |" in md
  assert len(read_lines(out / "records.jsonl")) == 24


def test_hf_peer_needs_a_model_path(prompts_file, tmp_path, tiny_chat):
  pytest.importorskip("transformers")
  with pytest.raises(ValueError, match="--peers hf needs"):
    run_bench(prompts_file, out=tmp_path / "o", drafters=[], peers=["hf"], target=tiny_chat, max_new_tokens=4,
              limit=1, progress=False)


def test_divergences_are_classified_by_the_top2_gap():
  """A method whose output leaves the baseline's is a near-tie only if the target's top-2 logit gap
  at the first differing token is within NEAR_TIE_GAP; the gap is the real one from the model."""
  import numpy as np
  import jax.numpy as jnp

  from specjax import api
  from specjax.models.llama import causal_mask
  from specjax.testing import tiny_target

  t = tiny_target(seed=4, scale=6.0)
  prompt = [3, 4, 5, 6]
  base = api.generate(t, [prompt], max_new_tokens=6).token_ids[0]
  seq = prompt + base[:2]
  logits = np.asarray(t.model(jnp.asarray([seq]), jnp.arange(len(seq))[None], None, causal_mask(1, len(seq))).logits[0, -1])
  top2 = np.sort(logits)[-2:]
  assert api.next_token_gap(t, seq) == pytest.approx(float(top2[1] - top2[0]), rel=1e-5, abs=1e-6)

  other = base[:2] + [int(np.argsort(logits)[-2])] + base[3:]
  p = Prompt(id="q1", text="x", category="qa", group="qa")
  records = {agg_lib.key("none", "q1"): {"token_ids": base, "new_tokens": 6, "target_forwards": 6, "wall_s": 1.0},
             agg_lib.key("pld", "q1"): {"token_ids": other, "new_tokens": 6, "target_forwards": 3, "wall_s": 0.5}}
  gaps = agg_lib.divergence_gaps(t, records, [p], ["none", "pld"], {"q1": prompt})
  assert gaps == {agg_lib.key("pld", "q1"): pytest.approx(float(top2[1] - top2[0]), rel=1e-5, abs=1e-6)}
  agg = agg_lib.aggregate(records, [p], ["none", "pld"], greedy=True, gaps=gaps)
  assert agg["pld"]["overall"]["identical_to_baseline"] == {"identical": 0, "total": 1, "near_tie": 0,
                                                            "max_gap": gaps[agg_lib.key("pld", "q1")]}
  tie = agg_lib.aggregate(records, [p], ["none", "pld"], greedy=True, gaps={k: 1e-4 for k in gaps})
  assert tie["pld"]["overall"]["identical_to_baseline"]["near_tie"] == 1


def test_resume_refuses_changed_drafter_defaults(prompts_file, tmp_path, tiny_chat, monkeypatch):
  """The same command line after a drafter's default changed (simulated: pld now resolves num_tokens=3 with
  no option typed) must not mix the old records with new ones: resolved settings are compared."""
  from specjax.drafters import registry
  kw = dict(out=tmp_path / "o", drafters=["pld"], target=tiny_chat, max_new_tokens=4, limit=1, progress=False)
  run_bench(prompts_file, **kw)
  make = registry.make
  monkeypatch.setattr(registry, "make", lambda d, **o: make(d, **({"num_tokens": 3, **o} if d == "pld" else o)))
  with pytest.raises(ValueError, match="'pld' records measured with other settings.*drafter"):
    run_bench(prompts_file, **kw)


def test_target_on_a_mesh_is_recorded(prompts_file, tmp_path):
  import specjax
  t = tiny_target(seed=0, scale=10.0)
  t.tokenizer.chat_template = CHAT
  placed = specjax.Target(t.model, t.tokenizer, t.cfg, "tiny", specjax.make_mesh(data=1))
  res = run_bench(prompts_file, out=tmp_path / "o", drafters=["none"], target=placed, limit=2, batch_size=2,
                  max_new_tokens=4, progress=False, tree_budget="auto")
  assert res["config"]["mesh"] == {"data": 1, "model": 1} and res["config"]["tree_budget"] == "auto"
  assert {r["settings"]["mesh"]["data"] for r in read_lines(tmp_path / "o" / run_lib.RECORDS)} == {1}


def test_bench_resumes_with_an_option_given_at_its_default(tmp_path, tiny_chat, monkeypatch):
  f = write_jsonl_bytes(tmp_path / "p.jsonl", [b'{"prompt": "t1 t2 t3"}', b'{"prompt": "t4 t5"}'])
  kw = dict(out=tmp_path / "o", drafters=["pld"], target=tiny_chat, max_new_tokens=3, progress=False)
  run_bench(f, **kw)
  calls = []
  real = Program.generate
  monkeypatch.setattr(Program, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
  default = registry.make("pld").num_tokens
  run_bench(f, drafter_options={"pld": {"num_tokens": default}}, **kw)
  assert calls == []                                     # all records reused, nothing measured again
  with pytest.raises(ValueError, match="num_tokens"):
    run_bench(f, drafter_options={"pld": {"num_tokens": default + 1}}, **kw)


def test_bench_resumes_records_of_older_versions(tmp_path, tiny_chat):
  """Records written before options were recorded in full (only the given ones) still resume."""
  f = write_jsonl_bytes(tmp_path / "p.jsonl", [b'{"prompt": "t1 t2 t3"}'])
  kw = dict(out=tmp_path / "o", drafters=["pld"], target=tiny_chat, max_new_tokens=3, progress=False)
  run_bench(f, **kw)
  path = tmp_path / "o" / "records.jsonl"
  recs = [json.loads(line) for line in path.read_text().splitlines()]
  for r in recs:
    r["settings"]["options"] = {}
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  assert len(run_bench(f, **kw)["records"]) == 2


def test_nan_never_reaches_records(tmp_path, tiny_chat):
  from specjax.io import records
  log = records.RecordLog(tmp_path / "r.jsonl")
  with pytest.raises(ValueError):
    log.write([{"method": "none", "id": 1, "tau": math.nan}])
  log.close()
