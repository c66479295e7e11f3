"""Device meshes: axes ("data", "model"), from Python (`make_mesh(data=2, model=4)`) or from the command
line (`--mesh data=2,model=4`)."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from specjax.checks import positive_int

AXES = ("data", "model")


def make_mesh(data: int = 1, model: int = 1, *, devices=None):
  """A jax.sharding.Mesh of data x model devices (the first data*model of `devices`, default all of
  jax.devices(), which spans every process of a multi-host job). "data" splits the batch, "model" the
  weights (heads, FFN, vocabulary) Megatron-style."""
  for name, v in (("data", data), ("model", model)):
    positive_int(v, f"mesh axis {name}")
  devices = list(jax.devices() if devices is None else devices)
  if data * model > len(devices):
    raise ValueError(f"a mesh of data={data} x model={model} needs {data * model} devices; "
                     f"{len(devices)} available ({devices[0].platform})")
  return Mesh(np.asarray(devices[:data * model], dtype=object).reshape(data, model), AXES)


def parse_mesh(text: str) -> dict[str, int]:
  """'data=2,model=4' -> {"data": 2, "model": 4}; an axis left out is 1."""
  out = {}
  for item in str(text).split(","):
    name, sep, value = item.strip().partition("=")
    if not sep or name not in AXES or name in out:
      raise ValueError(f"--mesh {text!r}: expected data=D,model=M (each axis at most once)")
    try:
      out[name] = positive_int(int(value), name)
    except ValueError:
      raise ValueError(f"--mesh {text!r}: {name} must be a positive integer, got {value!r}") from None
  return out
