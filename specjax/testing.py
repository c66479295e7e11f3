"""Small random targets for tests and examples (no files, no downloads)."""
from __future__ import annotations

import jax.numpy as jnp
from tokenizers import Tokenizer as _HFTokenizer, models, pre_tokenizers, decoders

from specjax.io import Target
from specjax.io.tokenizer import Tokenizer
from specjax.models.config import ModelConfig
from specjax.models.llama import Llama, _random_weights, weight_shapes


def tiny_config(**overrides) -> ModelConfig:
  base = dict(arch="llama", vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, ffn=64,
              rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, max_context=512)
  base.update(overrides)
  return ModelConfig(**base)


def tiny_target(seed: int = 0, *, scale: float = 1.0, eos_id: int = 1, dtype=None, **overrides) -> Target:
  """A random tiny Llama with a word-level tokenizer "t0".."t{V-1}". `scale` multiplies the random
  weights: larger values give peakier, more repetitive distributions. dtype: the weights' (float32)."""
  cfg = tiny_config(**overrides)
  w = _random_weights(weight_shapes(cfg), seed)
  w = {k: (v if k.endswith("norm") else v * scale) for k, v in w.items()}
  vocab = {f"t{i}": i for i in range(cfg.vocab)}
  tok = _HFTokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")
  return Target(Llama(cfg, w, dtype=dtype or jnp.float32), Tokenizer(tok, eos_ids=[eos_id]), cfg, "tiny")
