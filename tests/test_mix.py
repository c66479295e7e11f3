"""The shipped training prompt mix (specjax.train.mix) and the stored self-distilled answers
(specjax.train.answers): coverage, no Spec-Bench overlap, determinism, user files, resumable answers."""
import json

import numpy as np
import pytest

from specjax.train import answers, data as data_lib, mix


@pytest.fixture(scope="module")
def shipped():
  return mix.load()


def test_the_mix_ships_with_the_package_and_covers_every_task_type(shipped):
  assert mix.PACKAGED.stat().st_size < 5e6
  for name in ("LICENSE.gsm8k.MIT", "LICENSE.gpteacher.MIT", "LICENSE.selfinstruct.Apache2", "LICENSE.postgresql",
               "README.md"):
    assert (mix.PACKAGED.parent / name).is_file()
  counts = {t: 0 for t in mix.TASKS}
  for r in shipped:
    counts[r["task"]] += 1
  assert all(n > 0 for n in counts.values()), counts
  assert len({r["id"] for r in shipped}) == len(shipped)
  assert all(len(r["turns"]) == 2 for r in shipped if r["task"] == "multi_turn")
  # Interleaved across task types: any prefix is balanced.
  assert len({r["task"] for r in shipped[:len(mix.TASKS)]}) == len(mix.TASKS)


@pytest.mark.skipif(not mix.SPECBENCH.is_file(), reason="../shared/data/specbench/dev.jsonl is not here")
def test_no_training_prompt_shares_a_13_gram_with_specbench(shipped):
  bench = mix.specbench_ngrams()
  assert len(bench) > 10000
  hits = [r["id"] for r in shipped if any(mix.ngrams(t) & bench for t in r["turns"])]
  assert hits == []


def test_assembly_is_deterministic_and_drops_specbench_text(tmp_path):
  bench = tmp_path / "bench.jsonl"
  leaked = "Translate German to English: Pfandhäuser boomen in Singapur , da die Krise in der Mittelschicht angekommen ist"
  bench.write_text(json.dumps({"question_id": 1, "category": "translation", "turns": [leaked]}) + "\n")
  log = tmp_path / "generated.jsonl"
  rows = [{"key": f"german:{i}", "model": "m", "seed": 0, "instruction": "x", "finished": True,
           "text": f"Der Hund {i} läuft heute schnell durch den großen grünen Park der Stadt."} for i in range(5)]
  rows.append({"key": "german:5", "model": "m", "seed": 0, "instruction": "x", "finished": True,
               "text": leaked.removeprefix("Translate German to English: ")})
  rows.append(dict(rows[0], key="german:6"))                                  # an exact duplicate
  log.write_text("".join(json.dumps(r) + "\n" for r in rows))
  prompts = tmp_path / "prompts"
  prompts.mkdir()
  (prompts / "gsm8k_train.jsonl").write_text("".join(json.dumps({"question": f"Tom has {i} apples.", "answer": ""}) + "\n"
                                                     for i in range(7)))
  kw = dict(log_path=log, specbench=bench, german=tmp_path / "none.mo", target_german=True, multi_turns=0)
  a, report = mix.assemble(prompts, **kw)
  b, _ = mix.assemble(prompts, **kw)
  assert a == b
  assert report["counts"]["translation"] == 5 and report["counts"]["math_word"] == 7
  assert report["dropped"] == {"duplicate": 1, "specbench": 1}
  mix.write(a, tmp_path / "m1.jsonl.gz")
  mix.write(b, tmp_path / "m2.jsonl.gz")
  assert (tmp_path / "m1.jsonl.gz").read_bytes() == (tmp_path / "m2.jsonl.gz").read_bytes()
  assert mix.load(tmp_path / "m1.jsonl.gz") == a
  assert mix.plan("article", 3) == mix.plan("article", 5)[:3]                # growing keeps the first items


def test_training_reads_the_mix_by_default_and_a_users_files(tmp_path, monkeypatch):
  monkeypatch.delenv("SPECJAX_TRAIN_PROMPTS", raising=False)
  recs = data_lib.training_prompts()
  assert len(recs) > 1000 and 0 < sum(r.heldout for r in recs) < len(recs) / 10
  jl = tmp_path / "mine.jsonl"
  jl.write_text('{"prompt": "a"}\n\n{"turns": ["b", "c"], "id": "q7"}\n{"instruction": "d", "input": "e"}\n')
  assert [(r.id, r.prompt) for r in data_lib.training_prompts(jl)] == [("mine.jsonl:0", "a"), ("q7", "b"),
                                                                       ("mine.jsonl:3", "d\n\ne")]
  js = tmp_path / "mine.json"
  js.write_text(json.dumps([{"question": "f"}]))
  assert [r.prompt for r in data_lib.training_prompts(js)] == ["f"]
  js.write_text(json.dumps([{"text": "g"}]))
  with pytest.raises(ValueError, match="mine.json:1"):
    data_lib.training_prompts(js)


def test_answers_are_stored_resumed_and_read_by_training(tiny, tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  items = [{"id": f"r{i}", "prompt": rng.integers(2, 64, rng.integers(3, 9)).tolist()} for i in range(10)]
  base = tmp_path / "answers"
  assert answers.generate(tiny, items[:6], answer_tokens=8, batch_size=4, shard_size=4, base=base, progress=None) == 6
  assert answers.generate(tiny, items, answer_tokens=8, batch_size=4, shard_size=4, base=base, progress=None) == 4
  d = answers.directory(tiny.fingerprint, 8, base)
  stored = answers.read(d)
  assert sorted(stored) == sorted(it["id"] for it in items)
  assert len(list(d.glob("shard-*.npz"))) == 3
  # An answer is used only for the same prompt tokens.
  changed = [dict(items[0], prompt=items[0]["prompt"] + [5])] + items[1:]
  assert [s["id"] for s in answers.matching(changed, stored)] == [it["id"] for it in items[1:]]
  # Training takes the stored answers and generates only what is missing.
  monkeypatch.setenv("SPECJAX_ANSWERS", str(base))
  made = []
  from specjax.program import Program
  orig = Program.generate
  monkeypatch.setattr(Program, "generate", lambda self, p, s: made.append(len(p)) or orig(self, p, s))
  seqs = data_lib.sequences(tiny, changed, tmp_path / "cache.jsonl", answer_tokens=8, batch_size=4, progress=False)
  assert made == [1]
  assert [s["answer"] for s in seqs[1:]] == [stored[it["id"]][1] for it in items[1:]]


def test_train_arguments_take_the_mix_a_file_or_a_directory(tmp_path, monkeypatch):
  from specjax.train import checks
  monkeypatch.delenv("SPECJAX_TRAIN_PROMPTS", raising=False)
  checks._check_prompts(None)                                               # the shipped mix
  (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n')
  checks._check_prompts(tmp_path / "p.jsonl")
  (tmp_path / "p.txt").write_text("a\n")
  with pytest.raises(ValueError, match=r"\.jsonl .* or \.json"):
    checks._check_prompts(tmp_path / "p.txt")
  with pytest.raises(FileNotFoundError, match="no training prompts in"):
    checks._check_prompts(tmp_path)
