"""Weight-matmul chain alone (30 SmolLM2-shaped layers, random weights, lax.scan), T = 1, 2, 4, 8:
the part of a verify forward that is pure matmul, for comparison with benchmarks/verify_cost.py.
"in,out" is the layout specjax uses (x @ W[in, out]); "out,in" the transposed one.

    python benchmarks/matmul_chain.py
"""
import time, jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
L=30
W = dict(wqkv=jnp.asarray(rng.standard_normal((L,576,960),np.float32)*.02), wo=jnp.asarray(rng.standard_normal((L,576,576),np.float32)*.02),
  w_gate_up=jnp.asarray(rng.standard_normal((L,576,3072),np.float32)*.02), w_down=jnp.asarray(rng.standard_normal((L,1536,576),np.float32)*.02))
WT = {k: jnp.swapaxes(v,1,2).copy() for k,v in W.items()}
def mk(tr):
  mm = (lambda x,w: jnp.einsum("bti,oi->bto", x, w)) if tr else (lambda x,w: jnp.dot(x,w))
  @jax.jit
  def chain(W, x):
    def f(x, w):
      q = mm(x, w["wqkv"])[..., :576]
      x = x + mm(q, w["wo"])
      g = mm(x, w["w_gate_up"])
      x = x + mm(g[..., :1536]*g[...,1536:], w["w_down"])
      return x, None
    return jax.lax.scan(f, x, W)[0]
  return chain
fs = [("in,out", mk(False), W), ("out,in", mk(True), WT)]
for T in [1,2,4,8]:
  h = jnp.ones((1,T,576))
  for name, f, w in fs:
    f(w,h).block_until_ready()
    ws=[]
    for _ in range(5):
      t=time.perf_counter()
      for _ in range(4): f(w,h).block_until_ready()
      ws.append((time.perf_counter()-t)/4*1000)
    print(T, name, "%.1f"%min(ws), flush=True)
