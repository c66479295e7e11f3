"""Drafter training on a mesh of 8 fake CPU devices (tests/train_parallel_worker.py runs in its own
process: XLA_FLAGS takes effect only when JAX starts): a data-parallel step equals the one-device step on
the same global batch, features on the fly equal stored ones, a run resumes on another mesh shape, and
a user's own Hugging Face Llama directory goes end to end (answers, features, a trained checkpoint,
lossless decoding) on three meshes. One worker process serves every test (its JSON is cached)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
TOL = 1e-5          # float32: the mesh sums the batch's losses and gradients in another order


@pytest.fixture(scope="module")
def res() -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             SPECJAX_COMPILATION_CACHE="0", PYTHONPATH=str(HERE.parent))     # this checkout's specjax
  p = subprocess.run([sys.executable, str(HERE / "train_parallel_worker.py")], env=env, capture_output=True,
                     text=True, timeout=1200)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("run", ["medusa", "eagle3-online"])
def test_a_step_on_eight_devices_equals_the_one_device_step(res, run):
  r = res["steps"][run]
  one, eight = r["loss"]
  assert len(one) == 2 and all(abs(a - b) <= TOL * max(1.0, abs(a)) for a, b in zip(one, eight)), r["loss"]
  assert r["moved"] > 1e-3                            # the step did change the weights: the equality says something
  assert r["weights_diff"] <= TOL * max(1.0, r["weights_scale"]), r
  assert r["param_specs"] == ["P()"] and r["batch_spec"] == ["P('data',)"]     # replicated weights, split batch


def test_a_run_checkpointed_on_one_mesh_resumes_on_another(res):
  r = res["steps"]["resume"]
  assert r["weights_scale"] > 1e-3
  assert r["weights_diff"] <= TOL * max(1.0, r["weights_scale"]), r


def test_your_own_hf_llama_end_to_end_on_three_meshes(res):
  assert set(res["byo"]) == {"data=8", "data=4,model=2", "model=2", "online"}
  for mesh, r in res["byo"].items():
    if mesh == "online":
      continue
    assert r["same"] and r["fingerprint"] and r["drafter"] == "medusa", (mesh, r)
    assert r["steps"] == 4 and r["positions"] > 32
    forwards, new = r["forwards"]
    assert forwards <= new, (mesh, r)                  # speculation never costs a forward more than plain decoding
    assert r["embed_spec"] == "P('model', None)"       # the target's vocabulary split over "model", as in decoding


def test_features_on_the_fly_end_to_end_write_nothing(res):
  r = res["byo"]["online"]          # EAGLE trained with --features online on (data=4, model=2), then decoding with it
  assert r["same"] and r["drafter"] == "eagle" and r["steps"] == 2
  assert not [n for n in r["written"] if "feature" in n or n.endswith(".npz")], r["written"]
