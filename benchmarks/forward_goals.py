"""The forward-speed goals, measured in one process on the default model:

  chain     the 30 layers' four weight matmuls plus the LM head alone (the model's own weights and
            `_proj`, a residual add between them and nothing else): the floor a step is held to;
  forward   one jitted target forward (T new tokens, batch B, `context` tokens cached, a buffer of
            context + 64), the program a decode step runs;
  loop      a decode step inside `generate` (drafter none, greedy, `time_prefill`): (wall - prefill) /
            target forwards, against the raw forward of the same batch and cache buffer.

    PYTHONPATH=. python benchmarks/forward_goals.py [--dtype float32] [--out bench_out/forward_goals.json]

Goals (set in issue 10): forward(T=1) <= 1.3 x chain(T=1) at context 256 and 2048; t(8)/t(1) <= 1.2 and
t(16)/t(1) <= 1.35; a batch-16 step <= 2 x a batch-1 step; loop - forward < 5% of the forward.
"""
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import forward_args, forward_fn, median_ms, parser, save  # noqa: E402

import specjax  # noqa: E402
from specjax import api  # noqa: E402
from specjax.models.llama import _proj  # noqa: E402


def chain_fn(gd):
  """The weight matmuls of every layer plus the LM head, x [B, T, H] -> logits."""
  def chain(params, x):
    m = nnx.merge(gd, params)
    cfg = m.cfg
    B, T, _ = x.shape
    G = cfg.heads // cfg.kv_heads
    for i in range(cfg.layers):
      qkv = _proj("bth,hkcd->btkcd", x, m.wqkv[i][...])
      x = x + _proj("bti,io->bto", qkv[..., :G, :].reshape(B, T, -1), m.wo[i][...])
      gu = _proj("bth,hcf->btcf", x, m.w_gate_up[i][...])
      x = x + _proj("btf,fh->bth", gu[:, :, 0] * gu[:, :, 1], m.w_down[i][...])
    return m.head(x)
  return jax.jit(chain)


def main():
  ap = parser(__doc__, "bench_out/forward_goals.json")
  ap.add_argument("--contexts", default="256,2048")
  ap.add_argument("--sizes", default="1,8,16")
  ap.add_argument("--batches", default="1,4,16,32")
  ap.add_argument("--new-tokens", type=int, default=48)
  ap.add_argument("--prompt-len", type=int, default=100)
  a = ap.parse_args()
  t = specjax.load(a.model, dtype=a.dtype)
  cfg = t.cfg
  fwd, params = forward_fn(t)
  chain = chain_fn(nnx.graphdef(t.model))
  forward_ms = lambda **kw: median_ms(fwd, params, *forward_args(t, **kw), reps=10)
  res = dict(dtype=a.dtype, started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), chain={}, forward={}, batch={},
             loop={})
  for T in [int(x) for x in a.sizes.split(",")]:
    res["chain"][T] = median_ms(chain, params, jnp.ones((1, T, cfg.hidden), jnp.float32))
    for ctx in [int(x) for x in a.contexts.split(",")]:
      if T == 1 or ctx == 256:
        res["forward"][f"T={T},ctx={ctx}"] = forward_ms(B=1, T=T, context=ctx)
    print(T, res["chain"][T], res["forward"], flush=True)
  rng = np.random.default_rng(0)
  for B in [int(x) for x in a.batches.split(",")]:
    res["batch"][B] = forward_ms(B=B, T=1, context=256)
    prompts = [rng.integers(1000, 20000, a.prompt_len).tolist() for _ in range(B)]
    kw = dict(max_new_tokens=a.new_tokens, chat=False, drafter="none", time_prefill=True)
    specjax.generate(t, prompts, **kw)                 # compiles
    runs = []
    for _ in range(2):
      g = specjax.generate(t, prompts, **kw)
      runs.append(1e3 * (g.wall_s - g.prefill_s) / max(g.target_forwards))
    S = api.prepare(t, prompts, max_new_tokens=a.new_tokens, drafter="none")[0].max_len   # generate's buffer
    raw = forward_ms(B=B, T=1, context=a.prompt_len + a.new_tokens // 2, buffer=S)
    res["loop"][B] = dict(step_ms=min(runs), raw_forward_ms=raw, overhead=min(runs) / raw - 1, buffer=S,
                          tokens_per_s=B * 1e3 / min(runs))
    print(B, res["batch"][B], res["loop"][B], flush=True)
  f = res["forward"]
  res["goals"] = {
      "forward/chain ctx256 (<=1.3)": f["T=1,ctx=256"] / res["chain"][1],
      "forward/chain ctx2048 (<=1.3)": f.get("T=1,ctx=2048", float("nan")) / res["chain"][1],
      "t8/t1 (<=1.2)": f.get("T=8,ctx=256", float("nan")) / f["T=1,ctx=256"],
      "t16/t1 (<=1.35)": f.get("T=16,ctx=256", float("nan")) / f["T=1,ctx=256"],
      "batch16/batch1 (<=2)": res["batch"].get(16, float("nan")) / res["batch"].get(1, float("nan")),
      "loop overhead max (<0.05)": max(v["overhead"] for v in res["loop"].values()),
  }
  for k, v in res["goals"].items():
    print(f"{k}: {v:.2f}")
  save(a.out, res)


if __name__ == "__main__":
  main()
