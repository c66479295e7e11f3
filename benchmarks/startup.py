"""From command to first token: where a fresh process's time goes.

    python benchmarks/startup.py [--new-tokens 32] [--out bench_out/startup.json]

Each measurement is a new Python process. Phases, timed inside it: `import specjax`, `specjax.load`
(GGUF read + dequantisation + device copies), the first `generate` split into compilation (or loading
the program from JAX's persistent cache) and the run itself, then the time to first token (the same
program asked for one token: prefill and one step; `time_prefill` would leave the program out of the
persistent cache). Twice on one fresh cache directory: "cold" compiles and fills the cache, "warm" loads from it.
Then the whole `specjax generate` command's wall time, cold and warm, as a user sees it.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import parser, save  # noqa: E402

PROMPT = "Write a haiku about the sea."

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import specjax
t1 = time.perf_counter()
t = specjax.load("default")
t2 = time.perf_counter()
g = specjax.generate(t, [sys.argv[1]], max_new_tokens=int(sys.argv[2]))
t3 = time.perf_counter()
g1 = specjax.generate(t, [sys.argv[1]], max_new_tokens=1)     # the same program (the budget is traced)
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, generate_call_s=t3 - t2, compile_s=g.compile_s,
                      run_s=g.wall_s, new_tokens=g.new_tokens[0], first_token_s=g1.wall_s,
                      first_token_compile_s=g1.compile_s)))
"""


def main():
  ap = parser(__doc__, "bench_out/startup.json", target=False)
  ap.add_argument("--new-tokens", type=int, default=32)
  a = ap.parse_args()
  res = dict(phases={}, command_s={})
  with tempfile.TemporaryDirectory() as cache:
    env = dict(os.environ, SPECJAX_COMPILATION_CACHE=cache)
    for run in ("cold", "warm"):
      s = time.perf_counter()
      out = subprocess.run([sys.executable, "-c", CHILD, PROMPT, str(a.new_tokens)], env=env, check=True,
                           capture_output=True, text=True).stdout
      res["phases"][run] = dict(json.loads(out.strip().splitlines()[-1]), process_s=time.perf_counter() - s)
      print(run, res["phases"][run], flush=True)
  with tempfile.TemporaryDirectory() as cache:
    env = dict(os.environ, SPECJAX_COMPILATION_CACHE=cache)
    for run in ("cold", "warm"):
      s = time.perf_counter()
      subprocess.run([sys.executable, "-m", "specjax.cli", "generate", "--max-new-tokens", str(a.new_tokens), PROMPT],
                     env=env, check=True, capture_output=True)
      res["command_s"][run] = time.perf_counter() - s
      print("specjax generate", run, f"{res['command'][run]:.2f} s", flush=True)
  save(a.out, res)


if __name__ == "__main__":
  main()
