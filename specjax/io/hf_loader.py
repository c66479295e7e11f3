"""Reads a Hugging Face model directory: config.json, *.safetensors (+ index), tokenizer files."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from specjax.models.config import ModelConfig, RopeScaling

_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def read_config(d: pathlib.Path) -> ModelConfig:
  c = json.loads((d / "config.json").read_text())
  mt = c.get("model_type")
  if mt not in _ARCH:
    raise ValueError(f"{d}: unsupported architecture {mt!r}; supported: {', '.join(_ARCH)}")
  missing = [k for k in _REQUIRED if c.get(k) is None]
  if missing:
    raise ValueError(f"{d}: config.json lacks {', '.join(missing)}")
  # transformers >= 5 writes rope settings under rope_parameters; older files use rope_theta/rope_scaling.
  rp = c.get("rope_parameters") or c.get("rope_scaling") or {}
  theta = c.get("rope_theta", rp.get("rope_theta", 10000.0))
  kind = rp.get("rope_type", rp.get("type", "default"))
  scaling = None
  if kind == "llama3":
    scaling = RopeScaling(factor=rp["factor"], low_freq_factor=rp["low_freq_factor"],
                          high_freq_factor=rp["high_freq_factor"],
                          original_max_position=rp["original_max_position_embeddings"])
  elif kind not in ("default", None):
    raise ValueError(f"{d}: unsupported RoPE scaling {kind!r}; supported: default, llama3")
  heads = c["num_attention_heads"]
  max_ctx = c.get("max_position_embeddings", 2048)
  if mt == "mistral" and c.get("sliding_window"):
    max_ctx = min(max_ctx, c["sliding_window"])   # full attention equals sliding attention inside the window
  return ModelConfig(
      arch=_ARCH[mt], vocab=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
      heads=heads, kv_heads=c.get("num_key_value_heads", heads),
      head_dim=c.get("head_dim") or c["hidden_size"] // heads, ffn=c["intermediate_size"],
      rope_theta=float(theta), rope_scaling=scaling, norm_eps=c.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(c.get("tie_word_embeddings", False)),
      qkv_bias=bool(c.get("attention_bias", mt == "qwen2")), max_context=max_ctx)


def _tensor_files(d: pathlib.Path) -> list[pathlib.Path]:
  idx = d / "model.safetensors.index.json"
  if idx.exists():
    return sorted({d / f for f in json.loads(idx.read_text())["weight_map"].values()})
  files = sorted(d.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{d}: no *.safetensors files (pickled .bin checkpoints are not loaded)")
  return files


def _get(st, name, shape, d) -> np.ndarray:
  a = np.asarray(st.get_tensor(name), np.float32)
  if a.shape != tuple(shape):
    raise ValueError(f"{d}: tensor {name} has shape {a.shape}, expected {tuple(shape)} from config.json")
  return a


def read_weights(d: pathlib.Path, cfg: ModelConfig, dtype=np.float32) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  from specjax.models.llama import weight_shapes

  shapes = weight_shapes(cfg)
  out = {k: np.empty(s, dtype) for k, s in shapes.items()}
  N, K, D, F, H, V = cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.ffn, cfg.hidden, cfg.vocab
  expect = {"q_proj": (N * D, H), "k_proj": (K * D, H), "v_proj": (K * D, H), "o_proj": (H, N * D),
            "gate_proj": (F, H), "up_proj": (F, H), "down_proj": (H, F), "input_layernorm": (H,),
            "post_attention_layernorm": (H,)}
  qkv_cols = {"q_proj": slice(0, N * D), "k_proj": slice(N * D, (N + K) * D), "v_proj": slice((N + K) * D, None)}
  seen = set()
  layer_parts = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "input_layernorm",
                 "post_attention_layernorm"}
  filled = set()           # (layer, part) pairs written, to catch missing tensors
  for f in _tensor_files(d):
    with safe_open(str(f), framework="flax") as st:    # numpy has no bfloat16; flax gives jax arrays
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
          if mod in qkv_cols:
            if leaf == "weight":
              out["wqkv"][i, :, qkv_cols[mod]] = a.T
            elif leaf == "bias":
              if not cfg.qkv_bias:
                raise ValueError(f"{d}: {name} present but the config has no attention bias")
              out["bqkv"][i, qkv_cols[mod]] = a
              mod += ".bias"
            else:
              raise ValueError(f"{d}: unsupported tensor {name} (quantised safetensors are not supported)")
          elif leaf != "weight":
            raise ValueError(f"{d}: unsupported tensor {name} (biases are only supported on q/k/v)")
          elif mod == "o_proj":
            out["wo"][i] = a.T
          elif mod == "gate_proj":
            out["w_gate_up"][i, :, :F] = a.T
          elif mod == "up_proj":
            out["w_gate_up"][i, :, F:] = a.T
          elif mod == "down_proj":
            out["w_down"][i] = a.T
          elif mod == "input_layernorm":
            out["attn_norm"][i] = a
          elif mod == "post_attention_layernorm":
            out["mlp_norm"][i] = a
          filled.add((i, mod))
        seen.add(name)
  if "model.embed_tokens.weight" not in seen or "model.layers.0.self_attn.q_proj.weight" not in seen:
    raise ValueError(f"{d}: safetensors files lack Llama-family tensors (model.embed_tokens.weight, ...)")
  if "model.norm.weight" not in seen:
    raise ValueError(f"{d}: model.norm.weight is missing")
  if not cfg.tie_embeddings and "lm_head.weight" not in seen:
    raise ValueError(f"{d}: config says untied embeddings but lm_head.weight is missing")
  want = set(layer_parts) | ({"q_proj.bias", "k_proj.bias", "v_proj.bias"} if cfg.qkv_bias else set())
  missing = [f"model.layers.{i}.{m}" for i in range(cfg.layers) for m in sorted(want) if (i, m) not in filled]
  if missing:
    raise ValueError(f"{d}: {len(missing)} layer tensor(s) missing, e.g. {', '.join(missing[:3])}")
  return out
