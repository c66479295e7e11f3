"""Reads a Llama-family GGUF file: config, weights (dequantised tensor by tensor), tokenizer, template."""
from __future__ import annotations

import dataclasses
import struct

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quant_shape_to_byte_shape

from specjax.io import packing
from specjax.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from specjax.models.llama import weight_shapes

SUPPORTED_QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")

# GGUF metadata value types: struct format of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class Tensor:
  """name; type: gguf.GGMLQuantizationType; shape: numpy order (the file lists dims innermost first);
  data: read-only view of the mapped file, float32/float16 [shape] or uint8 [rows, bytes per row]."""
  name: str
  type: object
  shape: tuple[int, ...]
  data: np.ndarray


class GGUFFile:
  """A GGUF file's metadata {key: int | float | bool | str | list} and tensors {name: Tensor}, the
  tensor data left in the memory-mapped file until dequantised.

  Parsed here rather than with gguf.GGUFReader, which makes a numpy view per metadata element: seconds
  for a vocabulary's tokens and merges, most of `specjax.load` (docs/MEASUREMENTS.md#gguf-header).
  Little-endian GGUF versions 2 and 3; anything else raises ValueError."""

  def __init__(self, path):
    # plain ndarray and memoryview views of the mapping: slicing a np.memmap runs Python code per slice
    self._buf = buf = np.memmap(path, np.uint8, mode="r").view(np.ndarray)
    self._mv = memoryview(buf)
    if bytes(buf[:4]) != b"GGUF":
      raise ValueError("no GGUF magic number")
    self._pos = 4
    version, n_tensors, n_kv = self._unpack("<IQQ")
    if version not in (2, 3):
      raise ValueError(f"GGUF version {version} is not supported (2 and 3 are; big-endian files are not)")
    self.fields = {}
    for _ in range(n_kv):
      key = self._string()
      self.fields[key] = self._value(self._unpack("<I")[0])
    infos = []
    for _ in range(n_tensors):
      name = self._string()
      n_dims = self._unpack("<I")[0]
      dims = self._unpack(f"<{n_dims}Q")
      raw_type, offset = self._unpack("<IQ")
      infos.append((name, tuple(reversed(dims)), GGMLQuantizationType(raw_type), offset))
    align = int(self.fields.get("general.alignment", 32))
    start = -(-self._pos // align) * align
    self.tensors = {}
    for name, shape, qtype, offset in infos:
      if name in self.tensors:
        raise ValueError(f"tensor {name} appears twice")
      block, size = GGML_QUANT_SIZES[qtype]
      n = int(np.prod(shape, dtype=np.int64))
      if qtype.name in ("F32", "F16"):
        dt, view = (np.float32 if qtype.name == "F32" else np.float16), shape
      else:
        dt, view = np.uint8, quant_shape_to_byte_shape(shape, qtype)
      nbytes = n * size // block
      a, b = start + offset, start + offset + nbytes
      if b > len(buf):
        raise ValueError(f"tensor {name} ends at byte {b}, past the end of the file ({len(buf)} bytes)")
      self.tensors[name] = Tensor(name, qtype, shape, buf[a:b].view(dt).reshape(view))

  def _unpack(self, fmt):
    out = struct.unpack_from(fmt, self._mv, self._pos)
    self._pos += struct.calcsize(fmt)
    return out

  def _string(self) -> str:
    n = self._unpack("<Q")[0]
    if self._pos + n > len(self._buf):
      raise ValueError("a string runs past the end of the file")
    s = str(self._mv[self._pos:self._pos + n], "utf-8")
    self._pos += n
    return s

  def _value(self, vtype):
    if vtype in _SCALARS:
      return self._unpack("<" + _SCALARS[vtype])[0]
    if vtype == _STRING:
      return self._string()
    if vtype == _ARRAY:
      etype, n = self._unpack("<IQ")
      if etype in _SCALARS:      # numbers in one read
        fmt = "<" + _SCALARS[etype]
        if self._pos + n * struct.calcsize(fmt) > len(self._buf):
          raise ValueError("an array runs past the end of the file")
        return list(self._unpack(f"<{n}{_SCALARS[etype]}"))
      return [self._value(etype) for _ in range(n)]
    raise ValueError(f"unknown metadata value type {vtype}")


def _field(reader: GGUFFile, key, default=None):
  return reader.fields.get(key, default)


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
  names = set(reader.tensors)
  vocab = g("vocab_size")
  if vocab is None:
    if "tokenizer.ggml.tokens" not in reader.fields:
      raise ValueError(f"{path}: missing metadata {arch}.vocab_size (and no tokenizer.ggml.tokens)")
    vocab = len(reader.fields["tokenizer.ggml.tokens"])
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
  tensors = reader.tensors
  for t in tensors.values():
    if t.type.name not in SUPPORTED_QUANTS:
      raise ValueError(f"{path}: tensor {t.name} has unsupported quantisation type {t.type.name}; "
                       f"supported: {', '.join(SUPPORTED_QUANTS)}")

  def get(name, shape):
    """Tensor `name` dequantised to float32, [out, in] (numpy order), checked against `shape`."""
    if name not in tensors:
      raise ValueError(f"{path}: missing tensor {name}")
    t = tensors[name]
    got = t.shape
    if got != tuple(shape):
      raise ValueError(f"{path}: tensor {name} has shape {got}, expected {tuple(shape)} from the metadata")
    a = dequantize(t.data, t.type)
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
