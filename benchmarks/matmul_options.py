"""The 30 layers' four weight matmuls alone (random SmolLM2-shaped per-layer weights, unrolled), T = 1, 2, 4,
8, 16, 32 (env TS), one matmul variant per run; XLA flags through XLA_FLAGS.

    python benchmarks/matmul_options.py in,out|out,in|bf16|gemv_loop|mulreduce|bf16_mulreduce|bf16_pad2
    XLA_FLAGS=--xla_cpu_use_xnnpack=false python benchmarks/matmul_options.py in,out
"""
import time, sys, os, jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
L=30
mode = sys.argv[1] if len(sys.argv) > 1 else "in,out"
def w(*s): return jnp.asarray(rng.standard_normal(s, np.float32) * .02)
shapes = dict(wqkv=(576,960), wo=(576,576), w_gate_up=(576,3072), w_down=(1536,576))
if mode == "out,in":
  W = [{k: w(*s[::-1]) for k, s in shapes.items()} for _ in range(L)]
  mm = lambda x, w: jnp.einsum("bti,oi->bto", x, w)
elif mode == "bf16":
  W = [{k: w(*s).astype(jnp.bfloat16) for k, s in shapes.items()} for _ in range(L)]
  mm = lambda x, w: jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)
elif mode == "gemv_loop":
  W = [{k: w(*s) for k, s in shapes.items()} for _ in range(L)]
  mm = lambda x, w: jnp.concatenate([jnp.dot(x[:, t:t+1], w) for t in range(x.shape[1])], axis=1)
elif mode == "mulreduce":
  W = [{k: w(*s) for k, s in shapes.items()} for _ in range(L)]
  mm = lambda x, w: jnp.sum(x[..., :, None] * w, axis=-2)
elif mode == "bf16_mulreduce":
  W = [{k: w(*s).astype(jnp.bfloat16) for k, s in shapes.items()} for _ in range(L)]
  mm = lambda x, w: jnp.sum(x[..., :, None] * w.astype(jnp.float32), axis=-2)
elif mode == "bf16_pad2":
  W = [{k: w(*s).astype(jnp.bfloat16) for k, s in shapes.items()} for _ in range(L)]
  def mm(x, w):
    if x.shape[1] == 1:
      return jnp.dot(jnp.concatenate([x, x], 1).astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)[:, :1]
    return jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)
else:
  W = [{k: w(*s) for k, s in shapes.items()} for _ in range(L)]
  mm = lambda x, w: jnp.dot(x, w)
@jax.jit
def chain(W, x):
  for l in W:
    q = mm(x, l["wqkv"])[..., :576]
    x = x + mm(q, l["wo"])
    g = mm(x, l["w_gate_up"])
    x = x + mm(g[..., :1536] * g[..., 1536:], l["w_down"])
  return x
res = []
for T in [int(v) for v in os.environ.get('TS','1,2,4,8,16,32').split(',')]:
  h = jnp.ones((1, T, 576))
  chain(W, h).block_until_ready()
  ws = []
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(4): chain(W, h).block_until_ready()
    ws.append((time.perf_counter() - t) / 4 * 1000)
  res.append(f"T={T}:{min(ws):.1f}")
print(mode, os.environ.get("XLA_FLAGS", ""), " ".join(res), flush=True)
