"""specjax: lossless speculative decoding in JAX, the whole loop in one compiled program."""
import os as _os

# XLA's CPU "concurrency optimized" scheduler slows small-M matmul chains (tree verification, T >= 2) on
# the CPUs measured (docs/MEASUREMENTS.md#xla-cpu-scheduler). Applies only if set before JAX starts its CPU
# backend; an explicit setting in XLA_FLAGS wins.
# XLA aborts on flags it does not know, so only set it for the jaxlib versions we measured it on.
def _tune_xla_cpu():
  try:
    major, minor = (int(x) for x in _jaxlib_version().split(".")[:2])
  except (OSError, ValueError, TypeError):
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  if (major, minor) >= (0, 10) and "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
    _os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()


def _jaxlib_version() -> str | None:
  """jaxlib's version from its dist-info folder's name, without importlib.metadata (tens of ms at start-up,
  before the command line's Ctrl-C handling is in place) or jaxlib itself."""
  import importlib.util
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.origin:
    return None
  site = _os.path.dirname(_os.path.dirname(spec.origin))
  found = [n for n in _os.listdir(site) if n.startswith("jaxlib-") and n.endswith(".dist-info")]
  return found[0][len("jaxlib-"):-len(".dist-info")] if len(found) == 1 else None


_tune_xla_cpu()

# The public names are imported on first use (PEP 562), not here: `import specjax.cli` must not start
# JAX, so the command line installs its Ctrl-C handling before the seconds `import jax` takes.
_PUBLIC = {"Generation": "specjax.api", "generate": "specjax.api", "bench": "specjax.bench",
           "Target": "specjax.io", "load": "specjax.api", "make_mesh": "specjax.parallel",
           "train_drafter": "specjax.train", "drafters": "specjax.drafters", "parallel": "specjax.parallel"}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
  if name not in _PUBLIC:
    raise AttributeError(f"module 'specjax' has no attribute {name!r}")
  import importlib
  module = importlib.import_module(_PUBLIC[name])
  # A subpackage (drafters, parallel, bench) is itself the public name: importing any of its modules binds
  # specjax.<name> to it anyway, so a function of the same name could not stay there.
  value = module if _PUBLIC[name] == f"specjax.{name}" else getattr(module, name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
