"""Prints the optimized HLO lines of one decoder layer (SmolLM2 shapes, T = 1, cache buffer 4096) that touch the
cache-length axis: the transposes / copies XLA inserts before the attention dots.

    python benchmarks/attention_hlo.py
"""
import jax, jax.numpy as jnp, re
from specjax.models.llama import decoder_layer
from specjax.models.config import ModelConfig
cfg = ModelConfig(vocab=100, hidden=576, layers=1, heads=9, kv_heads=3, head_dim=64, ffn=1536)
w = {"wqkv": jnp.zeros((576, 3, 5, 64)), "wo": jnp.zeros((576, 576)), "w_gate_up": jnp.zeros((576, 2, 1536)),
     "w_down": jnp.zeros((1536, 576)), "attn_norm": jnp.ones(576), "mlp_norm": jnp.ones(576)}
S, T = 4096, 1
kc = jnp.zeros((1, S, 3, 64)); vc = kc
x = jnp.zeros((1, T, 576)); cos = jnp.ones((1, T, 32)); sin = cos
mask = jnp.ones((1, 1, 1, T, T), bool); live = jnp.ones((1, 1, 1, 1, S), bool)
f = jax.jit(lambda w, x, kc, vc, live: decoder_layer(cfg, w, x, cos, sin, (kc, vc), mask, live, jnp.float32))
txt = f.lower(w, x, kc, vc, live).compile().as_text()
for line in txt.splitlines():
  if re.search(r"(transpose|copy|dot\(|fusion\()", line) and ("4096" in line):
    print(line.strip()[:250])
