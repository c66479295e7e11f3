"""Reads a Hugging Face model directory: config.json, *.safetensors (+ index), tokenizer files."""
from __future__ import annotations

import contextlib
import math
import pathlib

import numpy as np
from safetensors import SafetensorError, safe_open

from specjax.io import jsonfile, packing
from specjax.models.config import ModelConfig, RopeScaling
from specjax.models.llama import weight_shapes

_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_MISSING = object()
# Bounds well beyond any released Llama-family model; a value outside them is a broken config.json and
# would otherwise surface as a MemoryError or a shape error deep in loading.
_MAX = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "num_hidden_layers": 1024, "num_attention_heads": 1024,
        "num_key_value_heads": 1024, "head_dim": 1024, "intermediate_size": 1 << 18,
        "max_position_embeddings": 1 << 24, "sliding_window": 1 << 24, "original_max_position_embeddings": 1 << 24}


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


class _Fields:
  """Typed reads of a JSON object's fields; errors name the file and the field."""

  def __init__(self, obj: dict, where: str, prefix: str = ""):
    self.obj, self.where, self.prefix = obj, where, prefix

  def _bad(self, key, want, v):
    return ValueError(f"{self.where}: {self.prefix}{key} must be {want}, got {jsonfile.show(v)}")

  def _read(self, key, default, ok, want):
    """The value at `key` when ok(value); `default` when it is absent or null (an error without one)."""
    v = self.obj.get(key)
    if v is None:
      if default is _MISSING:
        raise ValueError(f"{self.where}: config.json lacks {self.prefix}{key}")
      return default
    if not ok(v):
      raise self._bad(key, want, v)
    return v

  def int(self, key, default=_MISSING, lo=1):
    hi = _MAX.get(key, 1 << 31)
    return self._read(key, default, lambda v: _is_int(v) and lo <= v <= hi, f"an integer in [{lo}, {hi}]")

  def number(self, key, default=_MISSING):
    # a comparison, not math.isfinite: that raises OverflowError on a 400-digit integer
    v = self._read(key, default, lambda v: (_is_int(v) or isinstance(v, float)) and 0 < v < 1e300, "a finite number > 0")
    return None if v is None else float(v)

  def bool(self, key, default):
    return self._read(key, default, lambda v: isinstance(v, bool), "true or false")

  def str(self, key, default=_MISSING):
    return self._read(key, default, lambda v: isinstance(v, str), "a string")

  def obj_or_none(self, key):
    v = self.obj.get(key)
    if v is not None and not isinstance(v, dict):
      raise self._bad(key, "an object", v)
    return v


def read_config(d: pathlib.Path) -> ModelConfig:
  """config.json -> ModelConfig; every field is type- and range-checked, errors name the field."""
  path = d / "config.json"
  c = jsonfile.read(path)
  if not isinstance(c, dict):
    raise ValueError(f"{path}: expected a JSON object, got {jsonfile.show(c)}")
  mt = c.get("model_type")
  if not isinstance(mt, str) or mt not in _ARCH:
    raise ValueError(f"{d}: unsupported architecture {mt!r}; supported: {', '.join(_ARCH)}")
  missing = [k for k in _REQUIRED if c.get(k) is None]
  if missing:
    raise ValueError(f"{d}: config.json lacks {', '.join(missing)}")
  f = _Fields(c, str(path))
  # transformers >= 5 writes rope settings under rope_parameters; older files use rope_theta/rope_scaling.
  rp = f.obj_or_none("rope_parameters") or f.obj_or_none("rope_scaling") or {}
  r = _Fields(rp, str(path), "rope_parameters." if c.get("rope_parameters") else "rope_scaling.")
  theta = f.number("rope_theta", None) or r.number("rope_theta", 10000.0)
  kind = r.str("rope_type", None) or r.str("type", "default")
  scaling = None
  if kind == "llama3":
    scaling = RopeScaling(factor=r.number("factor"), low_freq_factor=r.number("low_freq_factor"),
                          high_freq_factor=r.number("high_freq_factor"),
                          original_max_position=r.int("original_max_position_embeddings"))
  elif kind != "default":
    raise ValueError(f"{d}: unsupported RoPE scaling {kind!r}; supported: default, llama3")
  hidden, heads = f.int("hidden_size"), f.int("num_attention_heads")
  kv_heads = f.int("num_key_value_heads", heads)
  if heads % kv_heads:
    raise ValueError(f"{path}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
  head_dim = f.int("head_dim", None, lo=2) or hidden // heads
  if head_dim < 2 or head_dim % 2:
    raise ValueError(f"{path}: the head size (head_dim, or hidden_size / num_attention_heads) must be even and "
                     f">= 2 for RoPE, got {head_dim}")
  max_ctx = f.int("max_position_embeddings", 2048)
  window = f.int("sliding_window", None)
  if mt == "mistral" and window:
    max_ctx = min(max_ctx, window)   # full attention equals sliding attention inside the window
  return ModelConfig(
      arch=_ARCH[mt], vocab=f.int("vocab_size"), hidden=hidden, layers=f.int("num_hidden_layers"),
      heads=heads, kv_heads=kv_heads, head_dim=head_dim, ffn=f.int("intermediate_size"),
      rope_theta=theta, rope_scaling=scaling, norm_eps=f.number("rms_norm_eps", 1e-6),
      tie_embeddings=f.bool("tie_word_embeddings", False),
      qkv_bias=f.bool("attention_bias", mt == "qwen2"), max_context=max_ctx)


def _tensor_files(d: pathlib.Path) -> list[pathlib.Path]:
  idx = d / "model.safetensors.index.json"
  if idx.exists():
    wm = jsonfile.read(idx)
    wm = wm.get("weight_map") if isinstance(wm, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(f, str) for f in wm.values()):
      raise ValueError(f"{idx}: expected a non-empty \"weight_map\" of tensor name -> file name")
    files = sorted({d / f for f in wm.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
      raise FileNotFoundError(f"{idx} names missing file(s): {', '.join(missing[:3])}")
    return files
  files = sorted(d.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{d}: no *.safetensors files (pickled .bin checkpoints are not loaded)")
  return files


@contextlib.contextmanager
def _open(f: pathlib.Path):
  """safe_open, with a truncated or corrupt file (SafetensorError) as a ValueError naming it."""
  try:
    with safe_open(str(f), framework="flax") as st:    # numpy has no bfloat16; flax gives jax arrays
      yield st
  except SafetensorError as e:
    raise ValueError(f"{f}: not a readable safetensors file ({e})") from None


def _check_sizes(files: list[pathlib.Path], cfg: ModelConfig, d: pathlib.Path, shapes: dict):
  """Reads only the headers: a cut or corrupt file, or a config.json asking for far more weights than the
  files hold, fails here, before memory for the weights is allocated (a smaller shortfall is a missing
  or misshapen tensor, named precisely while reading)."""
  held, names = 0, set()
  for f in files:
    with _open(f) as st:
      names.update(st.keys())
      held += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
  if "model.embed_tokens.weight" not in names or "model.layers.0.self_attn.q_proj.weight" not in names:
    raise ValueError(f"{d}: safetensors files lack Llama-family tensors (model.embed_tokens.weight, ...)")
  want = sum(math.prod(s) for s in shapes.values())
  if want > 2 * held:
    raise ValueError(f"{d}: config.json describes {want:,} weights but the safetensors files hold only {held:,}; "
                     "config.json does not belong to these weights")


def _get(st, name, shape, d) -> np.ndarray:
  a = np.asarray(st.get_tensor(name), np.float32)
  if a.shape != tuple(shape):
    raise ValueError(f"{d}: tensor {name} has shape {a.shape}, expected {tuple(shape)} from config.json")
  return a


def read_weights(d: pathlib.Path, cfg: ModelConfig, dtype=np.float32) -> dict[str, np.ndarray]:
  shapes = weight_shapes(cfg)
  files = _tensor_files(d)
  _check_sizes(files, cfg, d, shapes)
  out = {k: np.empty(s, dtype) for k, s in shapes.items()}
  N, K, D, F, H, V = cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.ffn, cfg.hidden, cfg.vocab
  expect = {"q_proj": (N * D, H), "k_proj": (K * D, H), "v_proj": (K * D, H), "o_proj": (H, N * D),
            "gate_proj": (F, H), "up_proj": (F, H), "down_proj": (H, F), "input_layernorm": (H,),
            "post_attention_layernorm": (H,)}
  qkv_parts = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}
  seen = set()
  layer_parts = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "input_layernorm",
                 "post_attention_layernorm"}
  filled = set()           # (layer, part) pairs written, to catch missing tensors
  for f in files:
    with _open(f) as st:
      for name in st.keys():
        parts = name.split(".")
        if name == "model.embed_tokens.weight":
          out["embed"][:] = _get(st, name, (V, H), d)
        elif name == "model.norm.weight":
          out["final_norm"][:] = _get(st, name, (H,), d)
        elif name == "lm_head.weight":
          if not cfg.tie_embeddings:
            out["lm_head"][:] = _get(st, name, (V, H), d).T
        elif parts[:2] == ["model", "layers"] and len(parts) >= 5 and parts[2].isdigit():
          # model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias} | model.layers.{i}.mlp.{gate,up,down}_proj.weight
          # | model.layers.{i}.{input,post_attention}_layernorm.weight
          i, leaf = int(parts[2]), parts[-1]
          mod = parts[-2]
          if mod not in layer_parts:
            continue          # e.g. rotary_emb.inv_freq buffers in old checkpoints
          if i >= cfg.layers:
            raise ValueError(f"{d}: tensor {name} is beyond num_hidden_layers={cfg.layers} in config.json")
          shape = expect[mod] if leaf == "weight" else expect[mod][:1]
          a = _get(st, name, shape, d)
          if mod in qkv_parts:
            if leaf == "weight":
              packing.put_qkv(out, cfg, i, qkv_parts[mod], a.T)
            elif leaf == "bias":
              if not cfg.qkv_bias:
                raise ValueError(f"{d}: {name} present but the config has no attention bias")
              packing.put_qkv(out, cfg, i, qkv_parts[mod], a)
              mod += ".bias"
            else:
              raise ValueError(f"{d}: unsupported tensor {name} (quantised safetensors are not supported)")
          elif leaf != "weight":
            raise ValueError(f"{d}: unsupported tensor {name} (biases are only supported on q/k/v)")
          elif mod == "o_proj":
            out["wo"][i] = a.T
          elif mod in ("gate_proj", "up_proj"):
            packing.put_gate_up(out, i, mod.removesuffix("_proj"), a.T)
          elif mod == "down_proj":
            out["w_down"][i] = a.T
          elif mod == "input_layernorm":
            out["attn_norm"][i] = a
          elif mod == "post_attention_layernorm":
            out["mlp_norm"][i] = a
          filled.add((i, mod))
        seen.add(name)
  if "model.norm.weight" not in seen:
    raise ValueError(f"{d}: model.norm.weight is missing")
  if not cfg.tie_embeddings and "lm_head.weight" not in seen:
    raise ValueError(f"{d}: config says untied embeddings but lm_head.weight is missing")
  want = set(layer_parts) | ({"q_proj.bias", "k_proj.bias", "v_proj.bias"} if cfg.qkv_bias else set())
  missing = [f"model.layers.{i}.{m}" for i in range(cfg.layers) for m in sorted(want) if (i, m) not in filled]
  if missing:
    raise ValueError(f"{d}: {len(missing)} layer tensor(s) missing, e.g. {', '.join(missing[:3])}")
  return out
