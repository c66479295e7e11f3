"""Shared bits of the benchmark scripts: machine description and memory-bandwidth probe."""
import os
import platform
import time

import numpy as np


def machine() -> dict:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return dict(cpu=cpu, cores=os.cpu_count(), jax=jax.__version__, devices=[str(d) for d in jax.devices()],
              python=platform.python_version())


def read_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
  """Best-of sustained read bandwidth: sum a large float32 array (numpy, all cores via no threads;
  numpy's sum is single threaded, so this is a per-core-ish lower bound)."""
  a = np.ones(mb * 2**20 // 4, np.float32)
  best = 0.0
  for _ in range(repeats):
    t = time.perf_counter()
    a.sum()
    best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
  return best
