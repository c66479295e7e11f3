"""Autoregressive decoding on the default model: specjax vs the bandwidth floor vs transformers.

    python benchmarks/ar_bench.py [--new-tokens 128] [--out bench_out/ar.json]

Measures, in one run: specjax tokens/s at batch 1 and 8 in float32 and bfloat16; the floor set by
memory bandwidth (weight bytes / measured read bandwidth); transformers greedy on the same weights;
peak resident memory of `specjax generate` (a subprocess) next to the float32 weight bytes.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import parser, read_bandwidth_gbs, save  # noqa: E402

import specjax  # noqa: E402
from specjax import api, io as sio  # noqa: E402

PROMPT = "Write a detailed story about a lighthouse keeper who discovers a hidden map."


def ours(dtype: str, batch: int, new: int) -> dict:
  t = specjax.load("default", dtype=dtype)
  prompts = [PROMPT] * batch
  specjax.generate(t, prompts, max_new_tokens=new)                     # compile + warm the timed program
  g = max((specjax.generate(t, prompts, max_new_tokens=new) for _ in range(2)), key=lambda g: g.tokens_per_s)
  return dict(tokens_per_s=g.tokens_per_s, new_tokens=sum(g.new_tokens), wall_s=g.wall_s,
              ms_per_step=1000 * g.wall_s / max(g.target_forwards))


def hf(new: int) -> dict:
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(os.cpu_count())
  p = sio.default_model_path()
  m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
  ids = api.encode_prompts(specjax.load("default"), [PROMPT], True)[0]
  x = torch.tensor([ids])
  with torch.no_grad():
    m.generate(x, max_new_tokens=new, do_sample=False)
    runs = []
    for _ in range(2):               # best of two; like specjax, it stops at EOS
      t = time.perf_counter()
      out = m.generate(x, max_new_tokens=new, do_sample=False)
      runs.append((time.perf_counter() - t, out.shape[1] - x.shape[1]))
  wall, n = min(runs, key=lambda r: r[0] / r[1])
  return dict(tokens_per_s=n / wall, new_tokens=n, wall_s=wall)


_PEAK = """
import runpy, sys
sys.argv = ["specjax"] + sys.argv[1:]
try:
  runpy.run_module("specjax.cli", run_name="__main__")
except SystemExit:
  pass
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would report this benchmark's own (forked) size.
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0], file=sys.stderr)
"""


def peak_rss_mb(new: int) -> float:
  """Peak resident memory of one `specjax generate` process (it reports its own high-water mark)."""
  r = subprocess.run([sys.executable, "-c", _PEAK, "generate", "--max-new-tokens", str(new), "--json", PROMPT],
                     check=True, capture_output=True, text=True)
  return int(r.stderr.strip().splitlines()[-1]) / 1024


def main():
  ap = parser(__doc__, "bench_out/ar.json", target=False)
  ap.add_argument("--new-tokens", type=int, default=128)
  a = ap.parse_args()
  t = specjax.load("default")
  weight_bytes = sum(x.nbytes for x in __import__("jax").tree.leaves(__import__("flax").nnx.state(t.model)))
  del t
  bw = read_bandwidth_gbs()
  res = dict(new_tokens=a.new_tokens, weight_bytes_f32=weight_bytes, read_bandwidth_gbs=bw,
             floor_tokens_per_s_f32=bw * 1e9 / weight_bytes)
  for dtype in ("float32", "bfloat16"):
    for b in (1, 8):
      res[f"specjax_{dtype}_b{b}"] = ours(dtype, b, a.new_tokens)
      print(dtype, b, res[f"specjax_{dtype}_b{b}"], flush=True)
  res["transformers_f32_b1"] = hf(a.new_tokens)
  res["peak_rss_mb_specjax_generate"] = peak_rss_mb(32)
  print(json.dumps(res, indent=1))
  save(a.out, res)


if __name__ == "__main__":
  main()
