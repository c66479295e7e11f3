"""The verify-cost curve: one target forward over T tree nodes, T = 1..64, at batch 1, 4, 8.

    python benchmarks/verify_cost.py [--dtype float32] [--context 256] [--out bench_out/verify_cost.json]

A speculative step costs one forward of T nodes; on CPU that cost grows with T (small-M matmuls),
so drafters size their trees from this curve. Each figure: the best of 5 rounds of 3 calls (ms).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import best_ms, forward_args, forward_fn, parser, save  # noqa: E402


def main():
  ap = parser(__doc__, "bench_out/verify_cost.json")
  ap.add_argument("--context", type=int, default=256, help="committed tokens in the cache")
  ap.add_argument("--sizes", default="1,2,4,8,16,32,64")
  ap.add_argument("--batches", default="1,4,8")
  a = ap.parse_args()
  import specjax
  t = specjax.load(a.model, dtype=a.dtype)
  fwd, params = forward_fn(t)
  rows = []
  for B in map(int, a.batches.split(",")):
    for T in map(int, a.sizes.split(",")):
      ms = best_ms(fwd, params, *forward_args(t, B=B, T=T, context=a.context, buffer=a.context + 128))
      rows.append(dict(batch=B, T=T, ms=ms))
      print(f"B={B} T={T}: {ms:.1f} ms", flush=True)
  save(a.out, dict(dtype=a.dtype, context=a.context, rows=rows))


if __name__ == "__main__":
  main()
