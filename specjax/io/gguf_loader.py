"""Reads a Llama-family GGUF file: config, weights (dequantised tensor by tensor), tokenizer, template."""
from __future__ import annotations

import numpy as np

from specjax.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling

SUPPORTED_QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  return f.contents()


def read_config(reader, path) -> ModelConfig:
  arch = _field(reader, "general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
  g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
  hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
  head_dim = int(g("attention.key_length", hidden // heads))
  names = {t.name for t in reader.tensors}
  vocab = g("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
  scaling = None
  if g("rope.scaling.type") == "llama3" or "rope_freqs.weight" in names:
    raise ValueError(f"{path}: GGUF rope_freqs (llama3 scaling) is not supported; load the Hugging Face directory instead")
  return ModelConfig(
      arch=arch, vocab=int(vocab), hidden=hidden, layers=int(g("block_count")), heads=heads,
      kv_heads=int(g("attention.head_count_kv", heads)), head_dim=head_dim,
      ffn=int(g("feed_forward_length")), rope_theta=float(g("rope.freq_base", 10000.0)), rope_scaling=scaling,
      norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in names, qkv_bias="blk.0.attn_q.bias" in names,
      max_context=int(g("context_length", 2048)))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undo llama.cpp's q/k row permutation (interleaved RoPE -> split-half). w: [out, ...]."""
  out = w.shape[0]
  return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_weights(reader, cfg: ModelConfig, path, dtype=np.float32) -> dict[str, np.ndarray]:
  """Dequantises one tensor at a time into preallocated stacked arrays (no second full copy)."""
  from gguf import GGMLQuantizationType
  from gguf.quants import dequantize

  from specjax.models.llama import weight_shapes

  tensors = {t.name: t for t in reader.tensors}
  for t in reader.tensors:
    if t.tensor_type.name not in SUPPORTED_QUANTS:
      raise ValueError(f"{path}: tensor {t.name} has unsupported quantisation type {t.tensor_type.name}; "
                       f"supported: {', '.join(SUPPORTED_QUANTS)}")

  def get(name):
    if name not in tensors:
      raise ValueError(f"{path}: missing tensor {name}")
    t = tensors[name]
    a = dequantize(t.data, GGMLQuantizationType(t.tensor_type))
    return np.asarray(a, np.float32).reshape([int(d) for d in reversed(t.shape)])   # [out, in]

  shapes = weight_shapes(cfg)
  out = {k: np.empty(s, dtype) for k, s in shapes.items()}
  N, K, D, H, F = cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.hidden, cfg.ffn
  out["embed"][:] = get("token_embd.weight")
  out["final_norm"][:] = get("output_norm.weight")
  if not cfg.tie_embeddings:
    out["lm_head"][:] = get("output.weight").T
  for i in range(cfg.layers):
    b = f"blk.{i}."
    out["wqkv"][i, :, :N * D] = _unpermute(get(b + "attn_q.weight"), N).T
    out["wqkv"][i, :, N * D:(N + K) * D] = _unpermute(get(b + "attn_k.weight"), K).T
    out["wqkv"][i, :, (N + K) * D:] = get(b + "attn_v.weight").T
    if cfg.qkv_bias:
      out["bqkv"][i] = np.concatenate([_unpermute(get(b + "attn_q.bias"), N), _unpermute(get(b + "attn_k.bias"), K),
                                       get(b + "attn_v.bias")])
    out["wo"][i] = get(b + "attn_output.weight").T
    out["w_gate_up"][i, :, :F] = get(b + "ffn_gate.weight").T
    out["w_gate_up"][i, :, F:] = get(b + "ffn_up.weight").T
    out["w_down"][i] = get(b + "ffn_down.weight").T
    out["attn_norm"][i] = get(b + "attn_norm.weight")
    out["mlp_norm"][i] = get(b + "ffn_norm.weight")
  return out


def read_tokenizer_spec(reader) -> dict:
  """Vocabulary, merges, special ids and chat template from GGUF metadata."""
  model = _field(reader, "tokenizer.ggml.model")
  if model != "gpt2":
    raise ValueError(f"unsupported GGUF tokenizer model {model!r}; supported: gpt2 (byte-level BPE)")
  eos = [int(_field(reader, "tokenizer.ggml.eos_token_id"))]
  eot = _field(reader, "tokenizer.ggml.eot_token_id")
  if eot is not None and int(eot) not in eos:
    eos.append(int(eot))
  bos = _field(reader, "tokenizer.ggml.bos_token_id")
  return dict(
      tokens=list(_field(reader, "tokenizer.ggml.tokens")),
      token_type=[int(x) for x in _field(reader, "tokenizer.ggml.token_type")],
      merges=list(_field(reader, "tokenizer.ggml.merges")),
      pre=_field(reader, "tokenizer.ggml.pre"),
      eos_ids=eos, bos_id=None if bos is None else int(bos),
      add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
      chat_template=_field(reader, "tokenizer.chat_template"))
