"""Arguments refused before long work, with a message naming the argument: `specjax train`'s
--out and every other argument before any distillation; the multi-host start-up's timeout; the drafters
the help texts list, from the registry; wrong argument types to the public API."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

import specjax
from specjax import cli
from specjax.drafters import registry
from specjax.testing import tiny_target

REPO = pathlib.Path(__file__).resolve().parents[1]


def _no_model(*a, **k):
  raise AssertionError("loaded the model before checking the arguments")


@pytest.fixture
def error(capsys):
  """Runs the CLI, expects exit 2 with one `specjax: error:` line; returns the line."""
  def run(argv):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("specjax: error: ") and err.count("\n") == 1, err
    return err
  return run


# ----------------------------------------------------------------------------- train

def test_train_out_file_refused_before_the_model_loads(tmp_path, monkeypatch, error):
  monkeypatch.setattr(cli, "load_target", _no_model)
  f = tmp_path / "file"
  f.write_text("x")
  assert "is a file; give a directory" in error(["train", "--out", str(f)])
  assert "cannot be made a directory" in error(["train", "--out", str(f / "sub")])
  assert "lr must be a number > 0, got nan" in error(["train", "--out", str(tmp_path / "o"), "--lr", "nan"])
  assert "draft_vocab must be an integer >= 0" in error(["train", "--out", str(tmp_path / "o"), "--draft-vocab", "-1"])
  assert "max_seconds must be a number > 0" in error(["train", "--out", str(tmp_path / "o"), "--max-seconds", "0"])
  assert "--sequences" in error(["train", "--out", str(tmp_path / "o"), "--sequences", str(tmp_path / "none.jsonl")])
  assert "no training prompts in" in error(["train", "--out", str(tmp_path / "o"), "--prompts", str(tmp_path)])
  assert "--features online trains drafters that read whole sequences" in error(
      ["train", "--out", str(tmp_path / "o"), "--features", "online"])          # medusa: single positions
  assert "--mesh 'dp=2'" in error(["train", "--out", str(tmp_path / "o"), "--mesh", "dp=2"])


@pytest.mark.parametrize("kw, match", [
    (dict(out=123), "out must be a directory path"),
    (dict(drafter="pld"), "no trainer for drafter 'pld'"),
    (dict(data="mine"), "data must be 'distill' or 'teacher'"),
    (dict(features="ram"), "features must be 'disk' or 'online'"),
    (dict(max_prompts=0), "max_prompts must be an integer >= 1"),
    (dict(steps="10"), "steps must be an integer >= 1, got '10'"),
    (dict(b1=1.0), r"b1 must be a number in \[0, 1\)"),
    (dict(batch=True), "batch must be an integer"),
    (dict(unknown=1), "unknown training option"),
    (dict(log=None), "log must be a callable"),
])
def test_train_drafter_checks_each_argument_first(tmp_path, kw, match):
  with pytest.raises((ValueError, TypeError), match=match):
    specjax.train_drafter(_no_model, **{"out": tmp_path / "o", **kw})


def test_train_drafter_wants_a_target(tmp_path):
  (tmp_path / "gsm8k_train.jsonl").write_text('{"question": "q", "answer": "a"}\n')
  with pytest.raises(TypeError, match="target must be a loaded model"):
    specjax.train_drafter("default", out=tmp_path / "o", prompts_dir=tmp_path)


# ----------------------------------------------------------------------------- multi-host start-up

def test_multihost_start_up_times_out_with_one_line(tmp_path):
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]                      # free: no coordinator will ever answer there
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, "-c", "import sys; from specjax.cli import main; sys.exit(main())", "generate",
                      "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
                      "--init-timeout", "2", "--model", str(tmp_path), "Hi"], capture_output=True, text=True,
                     env=env, timeout=120)
  took = time.perf_counter() - t0
  assert p.returncode == 2, p.stderr[-2000:]
  assert p.stderr.endswith(f"timed out after 2 s waiting for 2 processes at 127.0.0.1:{port} (this is process 1); start "
                           "every process with the same --coordinator and --num-processes, or raise --init-timeout\n")
  assert p.stderr.count("\n") == 1, p.stderr
  assert took < 60


def test_init_timeout_checked(error):
  assert "--init-timeout" in error(["generate", "--init-timeout", "0", "Hi"])


# ----------------------------------------------------------------------------- the drafters the CLI names

@pytest.mark.parametrize("command", ["generate", "batch", "bench"])
def test_help_lists_every_registered_drafter(command, capsys):
  with pytest.raises(SystemExit):
    cli.main([command, "--help"])
  text = " ".join(capsys.readouterr().out.split())
  listed = text[text.index("none is") if command != "bench" else text.index("--drafters"):]
  for name in registry.names():
    assert f" {name}," in listed or f" {name};" in listed or f" {name} (" in listed or f" {name}:" in listed, name
  for name in registry.shipped():
    assert name in listed[listed.index("by name alone"):]


def test_train_choices_are_the_trainable_drafters():
  from specjax.train import loop
  drafter = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "drafter")
  assert list(drafter.choices) == registry.trained() == list(loop.RECIPES)
  assert set(registry.shipped()) == {p.stem for p in registry.checkpoints_dir().glob("*.safetensors")}


# ----------------------------------------------------------------------------- API argument types

@pytest.fixture(scope="module")
def tiny():
  return tiny_target(seed=0)


@pytest.mark.parametrize("call, match", [
    (lambda t: specjax.generate(None, ["Hi"]), "target must be a loaded model, specjax.load"),
    (lambda t: specjax.generate("default", ["Hi"]), "target must be a loaded model"),
    (lambda t: specjax.generate(t, None), "prompts must be a string"),
    (lambda t: specjax.generate(t, ["t3"], chat=False, max_new_tokens="8"), "max_new_tokens must be a positive integer"),
    (lambda t: specjax.generate(t, ["t3"], chat=False, drafter=3), "drafter must be a name"),
    (lambda t: specjax.generate(t, ["t3"], chat=False, seed="1"), "seed must be an integer"),
    (lambda t: specjax.generate(t, ["t3"], chat=False, mesh="data=1"), "mesh must be a device mesh"),
    (lambda t: specjax.generate(t, ["t3"], chat="no"), "chat and allow_special must be True or False"),
    (lambda t: specjax.load(123), "path must be 'default', a .gguf file"),
    (lambda t: specjax.load(None), "path must be"),
    (lambda t: specjax.load("x.gguf", dtype=5), "dtype must be 'float32' or 'bfloat16'"),
    (lambda t: specjax.load("x.gguf", mesh=4), "mesh must be a device mesh"),
    (lambda t: specjax.drafters.load(None), "drafter must be a name"),
    (lambda t: specjax.drafters.load(["pld"]), "drafter must be a name"),
    (lambda t: specjax.drafters.load("pld", num_tokens="4"), "num_tokens"),
    (lambda t: specjax.train_drafter(None, out=123), "out must be a directory path"),
])
def test_wrong_argument_types_name_the_argument(tiny, call, match):
  with pytest.raises((TypeError, ValueError), match=match) as e:
    call(tiny)
  assert "\n" not in str(e.value)


def test_bench_options_name_a_checkpoint_path_with_dots():
  """-O DRAFTER.KEY=VALUE where DRAFTER is NAME:PATH (a .safetensors path has dots; option keys have none)."""
  from specjax.cli_args import parse_options
  got = parse_options(["cerberus:runs/v1.2/cerberus.safetensors.gate=0", "self-spec:4.gamma=1", "pld.num_tokens=8"],
                      qualified=True)
  assert got == {"cerberus:runs/v1.2/cerberus.safetensors": {"gate": 0}, "self-spec:4": {"gamma": 1},
                 "pld": {"num_tokens": 8}}
