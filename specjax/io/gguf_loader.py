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

  def need(k):
    v = g(k)
    if v is None:
      raise ValueError(f"{path}: missing metadata {arch}.{k}")
    return v

  hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
  head_dim = int(g("attention.key_length", hidden // heads))
  names = {t.name for t in reader.tensors}
  vocab = g("vocab_size")
  if vocab is None:
    if "tokenizer.ggml.tokens" not in reader.fields:
      raise ValueError(f"{path}: missing metadata {arch}.vocab_size (and no tokenizer.ggml.tokens)")
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
  scaling = None
  if g("rope.scaling.type") == "llama3" or "rope_freqs.weight" in names:
    raise ValueError(f"{path}: GGUF rope_freqs (llama3 scaling) is not supported; load the Hugging Face directory instead")
  return ModelConfig(
      arch=arch, vocab=int(vocab), hidden=hidden, layers=int(need("block_count")), heads=heads,
      kv_heads=int(g("attention.head_count_kv", heads)), head_dim=head_dim,
      ffn=int(need("feed_forward_length")), rope_theta=float(g("rope.freq_base", 10000.0)), rope_scaling=scaling,
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

  from specjax.io import packing
  from specjax.models.llama import weight_shapes

  tensors = {t.name: t for t in reader.tensors}
  for t in reader.tensors:
    if t.tensor_type.name not in SUPPORTED_QUANTS:
      raise ValueError(f"{path}: tensor {t.name} has unsupported quantisation type {t.tensor_type.name}; "
                       f"supported: {', '.join(SUPPORTED_QUANTS)}")

  def get(name, shape):
    """Tensor `name` dequantised to float32, [out, in] (numpy order), checked against `shape`."""
    if name not in tensors:
      raise ValueError(f"{path}: missing tensor {name}")
    t = tensors[name]
    got = tuple(int(d) for d in reversed(t.shape))
    if got != tuple(shape):
      raise ValueError(f"{path}: tensor {name} has shape {got}, expected {tuple(shape)} from the metadata")
    a = dequantize(t.data, GGMLQuantizationType(t.tensor_type))
    return np.asarray(a, np.float32).reshape(got)

  shapes = weight_shapes(cfg)
  out = {k: np.empty(s, dtype) for k, s in shapes.items()}
  N, K, D, H, F = cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.hidden, cfg.ffn
  V = cfg.vocab
  # llama.cpp's converter permutes q/k rows only for the "llama" architecture (interleaved RoPE); Qwen2
  # uses NeoX (split-half) RoPE and is stored unpermuted, like Hugging Face.
  unperm = _unpermute if cfg.arch in ("llama", "mistral") else (lambda w, n: w)
  out["embed"][:] = get("token_embd.weight", (V, H))
  out["final_norm"][:] = get("output_norm.weight", (H,))
  if not cfg.tie_embeddings:
    out["lm_head"][:] = get("output.weight", (V, H)).T
  for i in range(cfg.layers):
    b = f"blk.{i}."
    packing.put_qkv(out, cfg, i, "q", unperm(get(b + "attn_q.weight", (N * D, H)), N).T)
    packing.put_qkv(out, cfg, i, "k", unperm(get(b + "attn_k.weight", (K * D, H)), K).T)
    packing.put_qkv(out, cfg, i, "v", get(b + "attn_v.weight", (K * D, H)).T)
    if cfg.qkv_bias:
      packing.put_qkv(out, cfg, i, "q", unperm(get(b + "attn_q.bias", (N * D,)), N))
      packing.put_qkv(out, cfg, i, "k", unperm(get(b + "attn_k.bias", (K * D,)), K))
      packing.put_qkv(out, cfg, i, "v", get(b + "attn_v.bias", (K * D,)))
    out["wo"][i] = get(b + "attn_output.weight", (H, N * D)).T
    packing.put_gate_up(out, i, "gate", get(b + "ffn_gate.weight", (F, H)).T)
    packing.put_gate_up(out, i, "up", get(b + "ffn_up.weight", (F, H)).T)
    out["w_down"][i] = get(b + "ffn_down.weight", (H, F)).T
    out["attn_norm"][i] = get(b + "attn_norm.weight", (H,))
    out["mlp_norm"][i] = get(b + "ffn_norm.weight", (H,))
  return out


def read_tokenizer_spec(reader, path="GGUF file") -> dict:
  """Vocabulary, merges, special ids and chat template from GGUF metadata."""
  model = _field(reader, "tokenizer.ggml.model")
  if model is None or _field(reader, "tokenizer.ggml.tokens") is None:
    raise ValueError(f"{path}: no tokenizer in the GGUF metadata (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
  if model != "gpt2":
    raise ValueError(f"{path}: unsupported GGUF tokenizer model {model!r}; supported: gpt2 (byte-level BPE)")
  tokens = list(_field(reader, "tokenizer.ggml.tokens"))
  types = _field(reader, "tokenizer.ggml.token_type")
  eos = []
  for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
    v = _field(reader, key)
    if v is not None and int(v) not in eos:
      eos.append(int(v))
  bos = _field(reader, "tokenizer.ggml.bos_token_id")
  template = _field(reader, "tokenizer.chat_template")
  names = _field(reader, "tokenizer.chat_templates")      # llama.cpp's named templates, beside the default
  if isinstance(names, list) and names:
    template = ([{"name": "default", "template": template}] if template is not None else []) + [
        {"name": n, "template": _field(reader, f"tokenizer.chat_template.{n}")} for n in names]
  return dict(
      tokens=tokens,
      token_type=[int(x) for x in types] if types is not None else [1] * len(tokens),
      merges=list(_field(reader, "tokenizer.ggml.merges", [])),
      pre=_field(reader, "tokenizer.ggml.pre"),
      eos_ids=eos, bos_id=None if bos is None else int(bos),
      add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
      chat_template=template, source=str(path))
