"""specjax: lossless speculative decoding in JAX, the whole loop in one compiled program."""
from specjax.api import Generation, generate
from specjax.bench import run_bench as bench
from specjax.io import Target, load

__all__ = ["Generation", "Target", "bench", "generate", "load"]
__version__ = "0.1.0"
