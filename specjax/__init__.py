"""specjax: lossless speculative decoding in JAX, the whole loop in one compiled program."""
from specjax.api import Generation, generate
from specjax.io import Target, load

__all__ = ["Generation", "Target", "generate", "load"]
__version__ = "0.1.0"
