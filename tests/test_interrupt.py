"""Ctrl-C (SIGINT) during `specjax generate` exits at once with status 130 and one line on stderr,
`specjax: interrupted`, at every moment of a run: loading the model, compiling the program, decoding.
(It used to die with a segmentation fault when interrupted while compiling, and to wait for the whole
generation when interrupted while decoding.)

Each try runs the CLI in a fresh process through a wrapper that prints a marker on stdout as each phase
starts (around cli.load_target, jax.stages.Lowered.compile and jax.stages.Compiled.__call__, which the
API uses to compile and run its program); the test sends SIGINT a random moment after the marker.
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

import specjax.io as sio
from test_errors import hf_config, write_hf_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
TRIES = 7                      # per phase: 21 in all
# seconds after the marker, at most: loading the default model takes seconds, the tiny model below
# compiles in about a second and decodes for several
DELAY = {"loading": 0.5, "compiling": 0.3, "decoding": 0.5}

CHILD = """
import sys
import jax.stages
from specjax import cli

def marked(name, f):
  def g(*a, **k):
    print("@" + name, flush=True)
    return f(*a, **k)
  return g

cli.load_target = marked("loading", cli.load_target)
jax.stages.Lowered.compile = marked("compiling", jax.stages.Lowered.compile)
jax.stages.Compiled.__call__ = marked("decoding", jax.stages.Compiled.__call__)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> pathlib.Path:
  """A one-layer random model that never emits EOS (it has none): 4000 new tokens take seconds."""
  cfg = hf_config(vocab_size=2048, hidden_size=512, intermediate_size=1024, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=4096, eos_token_id=None)
  return write_hf_dir(tmp_path_factory.mktemp("interrupt") / "m", cfg)


def _default_model() -> str | None:
  try:
    return str(sio.default_model_path())
  except FileNotFoundError:
    return None


def interrupt(argv: list[str], phase: str, delay: float) -> tuple[int, str, float]:
  """Runs the CLI, sends SIGINT `delay` s after `phase` starts; returns (exit status, stderr, seconds from
  the signal to the exit)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  p = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, cwd=REPO, text=True)
  try:
    for line in p.stdout:
      if line.strip() == "@" + phase:
        break
    else:
      pytest.fail(f"the run ended before {phase}: {p.wait()} {p.stderr.read()}")
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    _, err = p.communicate(timeout=60)
    return p.returncode, err, time.perf_counter() - sent
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()


def test_sigint_at_every_phase_exits_130_with_one_line(slow_model):
  rng = random.Random(0)
  tiny = ["generate", "--model", str(slow_model), "--no-chat", "--max-new-tokens", "4000", "w1 w2 w3"]
  default = _default_model()
  load = ["generate", "--model", default, "--max-new-tokens", "8", "Hi"] if default else tiny
  tries = [(load if phase == "loading" else tiny, phase, rng.uniform(0, DELAY[phase]))
           for phase in DELAY for _ in range(TRIES)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda t: interrupt(*t), tries))
  for (_, phase, delay), (code, err, took) in zip(tries, results):
    what = f"SIGINT {delay:.3f} s into {phase}"
    assert code == 130, (what, code, err)
    assert err == "specjax: interrupted\n", (what, err)
    assert took < 5.0, (what, f"exited {took:.1f} s after the signal")


# What the `specjax` console script runs: nothing imported before the entry point.
ENTRY = "import sys; from specjax.cli import main; sys.exit(main())"
EARLY = (0.1, 0.25, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5)      # seconds after the process starts


def _interrupt_at(argv: list[str], at: float) -> tuple[int, str]:
  """Runs the CLI as the console script does and sends SIGINT `at` s after starting it (Python start-up,
  imports, JAX's start, the model's load): (exit status, stderr)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  p = subprocess.Popen([sys.executable, "-c", ENTRY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, cwd=REPO, text=True)
  try:
    time.sleep(at)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    return p.returncode, err
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()


def test_sigint_in_the_first_instants_exits_130_with_one_line(slow_model):
  """A Ctrl-C during `import jax` / `flax` used to print a traceback, or be ignored ("Exception
  ignored in _xla_gc_callback") with the answer printed and exit 0."""
  loaded = subprocess.run([sys.executable, "-c", "import sys, specjax.cli; print(*sys.modules)"], check=True,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))).stdout.split()
  assert "specjax.cli" in loaded and not {"jax", "flax", "numpy"} & set(loaded)      # the entry point is light
  argv = ["generate", "--model", str(slow_model), "--no-chat", "--max-new-tokens", "4000", "w1 w2 w3"]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda at: _interrupt_at(argv, at), EARLY))
  for at, (code, err) in zip(EARLY, results):
    assert (code, err) == (130, "specjax: interrupted\n"), (f"SIGINT {at} s after the start", code, err)
