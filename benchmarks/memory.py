"""Peak resident memory of a generation on the default model, per drafter (each in a fresh process).

    python benchmarks/memory.py [--max-new-tokens 256] [--batch 1] [--drafters none,pld,lookahead]
                                [--out bench_out/memory.json]
"""
import json
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import parser, save  # noqa: E402

CHILD = r"""
import json, resource, sys
import jax, specjax
from flax import nnx
t = specjax.load("default")
wbytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(t.model)))
def status(key):
  return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024
load_peak = status("VmHWM")
open("/proc/self/clear_refs", "w").write("5")     # reset the high-water mark: measure generation alone
g = specjax.generate(t, [sys.argv[2]] * int(sys.argv[3]), max_new_tokens=int(sys.argv[4]), drafter=sys.argv[1])
print(json.dumps(dict(drafter=sys.argv[1], weight_mb=wbytes / 2**20, load_peak_mb=load_peak,
                      generate_peak_mb=status("VmHWM"), new_tokens=sum(g.new_tokens),
                      process_peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""
PROMPT = "Summarize the following: The lighthouse keeper climbed the stairs every night to light the lamp."


def main():
  ap = parser(__doc__, "bench_out/memory.json", target=False)
  ap.add_argument("--max-new-tokens", type=int, default=256)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--drafters", default="none,pld,lookahead")
  a = ap.parse_args()
  rows = []
  for d in a.drafters.split(","):
    out = subprocess.run([sys.executable, "-c", CHILD, d, PROMPT, str(a.batch), str(a.max_new_tokens)],
                         check=True, capture_output=True, text=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
    print(rows[-1], flush=True)
  base = rows[0]["generate_peak_mb"]
  for r in rows:
    r["generate_vs_baseline"] = r["generate_peak_mb"] / base
  save(a.out, dict(max_new_tokens=a.max_new_tokens, batch=a.batch, rows=rows))


if __name__ == "__main__":
  main()
