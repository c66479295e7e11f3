"""Drafter training across two processes joined by jax.distributed (CPU, gloo), 4 fake devices each, one
mesh (data=4, model=2) over both: the target's features made on that mesh, Medusa trained on it, stopped
and resumed from orbax checkpoints the processes write together, equal the same run in one process with 8
fake devices (tests/train_multihost_worker.py). The one-process run starts after the two have ended: two
jax.distributed jobs at once on a 2-core machine miss each other's deadlines."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TOL = 1e-5          # float32: the mesh sums the batch's losses and gradients in another order


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", SPECJAX_COMPILATION_CACHE="0", PYTHONPATH=str(HERE.parent))
  env.pop("XLA_FLAGS", None)          # the worker sets its own device count
  worker = [sys.executable, str(HERE / "train_multihost_worker.py")]
  two, one = tmp_path / "two", tmp_path / "one"
  port = _free_port()
  procs = [subprocess.Popen(worker + [f"localhost:{port}", "2", str(i), str(two), "resume"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  p = subprocess.run(worker + ["none", "1", "0", str(one)], env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]

  # Each process cached its own features; process 0 alone wrote the log (one row a step), orbax both's checkpoints.
  assert sorted(x.name for x in (two / "cache").iterdir()) == ["process-0-of-2", "process-1-of-2"]
  losses = {k: [json.loads(l)["loss"] for l in (d / "run" / "log.jsonl").read_text().splitlines()]
            for k, d in (("two", two), ("one", one))}
  assert len(losses["two"]) == len(losses["one"]) == 4, losses
  assert all(abs(a - b) <= TOL * max(1.0, abs(a)) for a, b in zip(losses["one"], losses["two"])), losses
  ref = np.load(one / "result-0.npz")
  for i in range(2):
    got = np.load(two / f"result-{i}.npz")
    assert sorted(got.files) == sorted(ref.files)
    assert np.array_equal(got["hidden"], ref["hidden"])       # the features: the same forward, gathered everywhere
    for k in ref.files:
      scale = max(1.0, float(np.max(np.abs(ref[k]))))
      assert float(np.max(np.abs(got[k] - ref[k]))) <= TOL * scale, (i, k)
  moved = float(np.max(np.abs(ref["w2"])))
  assert moved > 1e-3                 # training did move the weights: the equality says something
