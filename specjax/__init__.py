"""specjax: lossless speculative decoding in JAX, the whole loop in one compiled program."""
import os as _os

# XLA's CPU "concurrency optimized" scheduler makes small-M matmul chains (tree verification, T >= 2)
# about 20-25% slower on the 2-core machines we measured (BENCHMARKS.md). Applies only if set before
# JAX starts its CPU backend; an explicit setting in XLA_FLAGS wins.
# XLA aborts on flags it does not know, so only set it for the jaxlib versions we measured it on.
def _tune_xla_cpu():
  from importlib import metadata
  try:
    major, minor = (int(x) for x in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  if (major, minor) >= (0, 10) and "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
    _os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()


_tune_xla_cpu()
from specjax.api import Generation, generate
from specjax.bench import run_bench as bench
from specjax.io import Target, load
from specjax.parallel import make_mesh
from specjax.train import train_drafter
from specjax import drafters, parallel

__all__ = ["Generation", "Target", "bench", "drafters", "generate", "load", "make_mesh", "parallel", "train_drafter"]
__version__ = "0.1.0"
