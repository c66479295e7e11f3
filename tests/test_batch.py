"""Batch jobs: every input id answered exactly once across kill -9 and resume, malformed rows in the errors
file, and a rerun with other (resolved) settings refused. Tiny random target; the kill tests run the CLI in
subprocesses, slowed down so the kills land mid-job."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from specjax import cli
from specjax.batch import run_batch, side_paths
from test_cli import CHAT, tiny_chat  # noqa: F401 (fixture)


def good_rows(n=12):
  return [{"id": f"q{i}", "prompt": " ".join(f"t{(i * 5 + j) % 60 + 2}" for j in range(4 + i % 3)) * 2}
          for i in range(n)]


def write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
  path.write_text("".join(x + "\n" for x in lines))
  return path


def read(path: pathlib.Path) -> list[dict]:
  return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_errors_file_and_rerun_adds_nothing(tmp_path, tiny_chat):
  rows = [json.dumps(r) for r in good_rows(6)]
  lines = rows[:2] + ['{"id": "bad", "prompt": ', '{"id": "np", "text": "no prompt here"}', rows[2],
                      json.dumps({"id": "long", "prompt": "t5 " * 600}), json.dumps({"id": "q0", "prompt": "t3 t4"}),
                      ""] + rows[3:]
  inp = write_lines(tmp_path / "in.jsonl", lines)
  out = tmp_path / "results.jsonl"
  kw = dict(target=tiny_chat, batch_size=2, max_new_tokens=5, progress=False)
  res = run_batch(inp, out, **kw)
  assert res["written"] == 6 and res["errors"] == 4
  recs = read(out)
  assert [r["id"] for r in recs] == [f"q{i}" for i in range(6)]
  assert all(r["new_tokens"] >= 1 and len(r["token_ids"]) == r["new_tokens"] for r in recs)
  errors_path, settings_path = side_paths(out)
  assert errors_path.name == "results.errors.jsonl" and settings_path.exists()
  errs = read(errors_path)
  assert [e["line"] for e in errs] == [3, 4, 6, 7]
  assert "invalid JSON" in errs[0]["error"]
  assert "'prompt' or 'turns'" in errs[1]["error"]
  assert errs[2]["id"] == "long" and "context" in errs[2]["error"]
  assert "duplicate id 'q0' (first on line 1)" in errs[3]["error"]
  before = (out.read_bytes(), errors_path.read_bytes())
  res = run_batch(inp, out, **kw)                         # a finished job: nothing to add, nothing repeated
  assert res["written"] == 0 and res["skipped"] == 6
  assert (out.read_bytes(), errors_path.read_bytes()) == before


def test_other_settings_refused_unless_overwrite(tmp_path, tiny_chat):
  inp = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in good_rows(2)])
  out = tmp_path / "r.jsonl"
  kw = dict(target=tiny_chat, batch_size=2, max_new_tokens=4, progress=False, drafter="pld")
  run_batch(inp, out, **kw)
  with pytest.raises(ValueError, match="max_new_tokens: 4 there, 5 now"):
    run_batch(inp, out, **dict(kw, max_new_tokens=5))
  with pytest.raises(ValueError, match="drafter"):
    run_batch(inp, out, **dict(kw, drafter_options={"num_tokens": 3}))
  with pytest.raises(ValueError, match="drafter"):
    run_batch(inp, out, **dict(kw, drafter="none"))
  with pytest.raises(ValueError, match="tree_budget: None there, 'auto' now"):
    run_batch(inp, out, **dict(kw, tree_budget="auto"))
  # An option given at its default resolves to the same settings: resumes (here: nothing left to do).
  assert run_batch(inp, out, **dict(kw, drafter_options={"num_tokens": 4}))["skipped"] == 2
  res = run_batch(inp, out, **dict(kw, max_new_tokens=5, overwrite=True))
  assert res["written"] == 2 and all(r["new_tokens"] <= 5 for r in read(out))
  assert json.loads(side_paths(out)[1].read_text())["max_new_tokens"] == 5


def test_answers_without_settings_file_refused(tmp_path, tiny_chat):
  inp = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in good_rows(1)])
  from specjax.io.prompts import prompt_sha256
  out = write_lines(tmp_path / "r.jsonl", [json.dumps({"id": "q0", "text": "x",
                                                       "prompt_sha256": prompt_sha256(good_rows(1)[0]["prompt"])})])
  with pytest.raises(ValueError, match="settings.json is missing"):
    run_batch(inp, out, target=tiny_chat, max_new_tokens=3, progress=False)


RUNNER = f"""
import sys, time
from specjax import api, cli
from specjax.testing import tiny_target
t = tiny_target(seed=0, scale=10.0)
t.tokenizer.chat_template = {CHAT!r}
cli.load_target = lambda model, dtype, **kw: t
generate = api.generate
def slowed(*a, **kw):             # slow enough that the test's kills land between and during batches
  time.sleep(float(sys.argv[1]))
  return generate(*a, **kw)
api.generate = slowed
sys.exit(cli.main(sys.argv[2:]))
"""


def _cli(tmp_path, inp, out, slow):
  script = tmp_path / "runner.py"
  script.write_text(RUNNER)
  env = dict(os.environ, SPECJAX_COMPILATION_CACHE="0", JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, str(script), str(slow), "batch", "--in", str(inp), "--out", str(out),
                           "--drafter", "pld", "--batch-size", "3", "--max-new-tokens", "6", "--no-progress"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lines(path: pathlib.Path) -> int:
  return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_at_several_points_loses_and_repeats_nothing(tmp_path, tiny_chat):
  rows = good_rows(16)
  inp = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in rows] + ["not json"])
  ref = tmp_path / "ref.jsonl"
  run_batch(inp, ref, target=tiny_chat, drafter="pld", batch_size=3, max_new_tokens=6, progress=False)
  out = tmp_path / "results.jsonl"
  kills = 0
  for at in (0, 2, 7, 11):              # answers in the file when the kill comes (0: during start-up)
    proc = _cli(tmp_path, inp, out, slow=0.4)
    deadline = time.monotonic() + 240
    while proc.poll() is None and _lines(out) < at and time.monotonic() < deadline:
      time.sleep(0.02)
    if proc.poll() is None:
      os.kill(proc.pid, signal.SIGKILL)
      kills += proc.wait() == -signal.SIGKILL
    proc.communicate()
  assert kills >= 3                      # the kills really interrupted running jobs
  with out.open("ab") as f:
    f.write(b'{"id": "q15", "text": "a torn wri')     # and a write cut mid-line, as a kill can leave it
  proc = _cli(tmp_path, inp, out, slow=0.0)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err.decode()
  assert b"removed 1 unreadable line" in err
  got, want = read(out), read(ref)
  assert sorted(r["id"] for r in got) == sorted(r["id"] for r in want) == sorted(r["id"] for r in rows)
  by_id = {r["id"]: r for r in got}
  assert len(by_id) == len(got)                                   # each id exactly once
  for r in want:
    assert by_id[r["id"]]["token_ids"] == r["token_ids"] and by_id[r["id"]]["text"] == r["text"]
  assert [e["line"] for e in read(side_paths(out)[0])] == [17]   # the malformed row, recorded once
  _check_job(out, inp, tiny_chat, max_new=6)                      # each answer is its own prompt's


def test_cli_batch_refuses_other_settings(tmp_path, tiny_chat, monkeypatch, capsys):
  monkeypatch.setattr(cli, "load_target", lambda model, dtype, **kw: tiny_chat)
  inp = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in good_rows(2)])
  out = tmp_path / "r.jsonl"
  args = ["batch", "--in", str(inp), "--out", str(out), "--max-new-tokens", "3", "--no-progress"]
  assert cli.main(args) == 0
  assert "2 answered now" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main(args + ["--drafter", "lookahead"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("specjax: error:") and "other settings" in err and "--overwrite" in err
  assert cli.main(args + ["--drafter", "lookahead", "--overwrite"]) == 0


def test_two_process_job_each_answers_its_own_lines_and_merges(tmp_path, tiny_chat):
  import socket
  rows = [json.dumps(r) for r in good_rows(9)]
  inp = write_lines(tmp_path / "in.jsonl", rows[:3] + ['{"id": "bad", '] + rows[3:] + [rows[0]])
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  out = tmp_path / "multi.jsonl"
  here = pathlib.Path(__file__).resolve().parent
  env = dict(os.environ, JAX_PLATFORMS="cpu", SPECJAX_COMPILATION_CACHE="0", PYTHONPATH=str(here.parent))
  worker = here / "multihost_batch_worker.py"
  procs = [subprocess.Popen([sys.executable, str(worker), f"localhost:{port}", "2", str(i), str(inp), str(out), CHAT],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  res = {r["process"]: r for r in (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)}
  assert res[0]["first"]["written"] + res[1]["first"]["written"] == 9
  assert res[1]["second"]["written"] >= 1 and res[0]["second"]["written"] == 0     # only the damage is redone
  assert res[0]["second"]["merged"] == str(out) and res[1]["second"]["merged"] is None
  single = tmp_path / "single.jsonl"
  run_batch(inp, single, target=tiny_chat, batch_size=2, max_new_tokens=6, drafter="pld", progress=False)
  key = lambda recs: [(r["id"], r["line"], r["token_ids"]) for r in recs]
  assert key(read(out)) == key(read(single))                                      # each id once, input order
  assert [e["line"] for e in read(side_paths(out)[0])] == [e["line"] for e in read(side_paths(single)[0])] == [4, 11]
  with pytest.raises(ValueError, match="another number of processes"):                   # now one process
    run_batch(inp, out, target=tiny_chat, batch_size=2, max_new_tokens=6, drafter="pld", progress=False)


# ----------------------------------------------------------------------------- identity across edits

def _single(target, text: str, max_new: int) -> list[int]:
  """A fresh run of one prompt alone: what its answer must be whatever batch it was answered in."""
  from specjax import api
  return api.generate(target, [text], max_new_tokens=max_new, drafter="pld").token_ids[0]


def _check_job(out: pathlib.Path, inp: pathlib.Path, target, max_new: int = 5) -> list[dict]:
  """Every good row of `inp` answered exactly once with its own prompt's answer, each record naming the
  row's current line and prompt; returns the records of rows still in the input."""
  from specjax.io.prompts import prompt_sha256, stream_prompts
  rows = {str(p.id): (n, p) for n, p in stream_prompts(inp) if not isinstance(p, ValueError)}
  recs = read(out)
  assert len({str(r["id"]) for r in recs}) == len(recs)                      # none duplicated
  live = [r for r in recs if r["line"] is not None]
  assert sorted(str(r["id"]) for r in live) == sorted(rows)                   # none missing
  for r in live:
    line, p = rows[str(r["id"])]
    assert r["line"] == line and r["prompt_sha256"] == prompt_sha256(p.text)
    assert r["token_ids"] == _single(target, p.text, max_new), (r["id"], p.text)   # paired with its own prompt
  assert all(str(r["id"]) not in rows for r in recs if r["line"] is None)
  return live


KW = dict(drafter="pld", batch_size=3, max_new_tokens=5, progress=False)


def test_fixing_a_malformed_line_then_rerunning(tmp_path, tiny_chat):
  texts = ["t3 t4 t5 t6", "t7 t8 t9", "t10 t11 t12 t13", "t14 t15"]
  lines = [json.dumps({"prompt": t}) for t in texts]
  inp = write_lines(tmp_path / "in.jsonl", [lines[0], '{"prompt": "t7 t8 t9"', *lines[2:]])
  out = tmp_path / "r.jsonl"
  res = run_batch(inp, out, target=tiny_chat, **KW)
  assert (res["written"], res["errors"]) == (3, 1)
  write_lines(inp, lines)                                   # the user fixes line 2 as the errors file says
  res = run_batch(inp, out, target=tiny_chat, **KW)
  assert (res["written"], res["skipped"], res["errors"]) == (1, 3, 0)
  assert read(side_paths(out)[0]) == []                     # the errors file lists the input's bad rows now
  assert [r["line"] for r in _check_job(out, inp, tiny_chat)] == [1, 2, 3, 4]


def test_insert_delete_reorder_then_rerun(tmp_path, tiny_chat):
  rows = [{"prompt": f"t{i + 2} t{i + 9} t{i + 20}"} for i in range(6)]
  rows[1]["id"] = "x1"
  rows.append(dict(rows[0]))                                # the same prompt twice, no id: two keys
  inp = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in rows])
  out = tmp_path / "r.jsonl"
  assert run_batch(inp, out, target=tiny_chat, **KW)["written"] == 7
  new = {"prompt": "t40 t41 t42"}
  edited = [rows[3], new, rows[0], rows[5], rows[1], rows[6], rows[4]]        # rows[2] deleted, new inserted
  write_lines(inp, [json.dumps(r) for r in edited])
  res = run_batch(inp, out, target=tiny_chat, **KW)
  assert (res["written"], res["skipped"]) == (1, 6)
  live = _check_job(out, inp, tiny_chat)
  assert [r["line"] for r in live] == list(range(1, 8))
  assert sum(r["line"] is None for r in read(out)) == 1      # the deleted row's answer, kept and marked
  write_lines(inp, [json.dumps(r) for r in edited[::-1]])   # reordered again: nothing to answer
  assert run_batch(inp, out, target=tiny_chat, **KW)["written"] == 0
  _check_job(out, inp, tiny_chat)


def test_mixed_explicit_and_missing_ids(tmp_path, tiny_chat):
  inp = write_lines(tmp_path / "in.jsonl", ['{"id": 1, "prompt": "t3 t4"}', '{"prompt": "t5 t6"}',
                                             '{"prompt": "t3 t4"}'])
  out = tmp_path / "r.jsonl"
  res = run_batch(inp, out, target=tiny_chat, **KW)
  assert (res["written"], res["errors"]) == (3, 0)
  assert [r["id"] for r in _check_job(out, inp, tiny_chat)][0] == 1


def test_answers_for_other_prompts_refused(tmp_path, tiny_chat, monkeypatch, capsys):
  inp = write_lines(tmp_path / "in.jsonl", ['{"id": "a", "prompt": "t3 t4"}', '{"id": "b", "prompt": "t5 t6"}'])
  out = tmp_path / "r.jsonl"
  run_batch(inp, out, target=tiny_chat, **KW)
  before = out.read_bytes()
  write_lines(inp, ['{"id": "a", "prompt": "t3 t4"}', '{"id": "b", "prompt": "t7 t8"}'])   # id b, another prompt
  with pytest.raises(ValueError, match="answer for id 'b' is for another prompt than line 2"):
    run_batch(inp, out, target=lambda: pytest.fail("loaded the model"), **KW)
  monkeypatch.setattr(cli, "load_target", lambda model, dtype, **kw: tiny_chat)
  args = ["batch", "--in", str(inp), "--out", str(out), "--drafter", "pld", "--batch-size", "3",
          "--max-new-tokens", "5", "--no-progress"]
  with pytest.raises(SystemExit) as e:
    cli.main(args)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and "does not match" in err
  assert out.read_bytes() == before
  old = [{k: v for k, v in r.items() if k != "prompt_sha256"} for r in read(out)]   # written before this field
  write_lines(out, [json.dumps(r) for r in old])
  with pytest.raises(ValueError, match="older specjax"):
    run_batch(inp, out, target=tiny_chat, **KW)
  assert cli.main(args + ["--overwrite"]) == 0
  _check_job(out, inp, tiny_chat)
