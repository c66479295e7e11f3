"""specjax: lossless speculative decoding in JAX, the whole loop in one compiled program."""
import os as _os

# XLA's CPU "concurrency optimized" scheduler makes small-M matmul chains (tree verification, T >= 2)
# about 20-25% slower on the 2-core machines we measured (BENCHMARKS.md). Applies only if set before
# JAX starts its CPU backend; an explicit setting in XLA_FLAGS wins.
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
  _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") +
                              " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
from specjax.api import Generation, generate
from specjax.bench import run_bench as bench
from specjax.io import Target, load

__all__ = ["Generation", "Target", "bench", "generate", "load"]
__version__ = "0.1.0"
