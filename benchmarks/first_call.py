"""First-call latency per drafter: what a new user waits before the first answer of each drafter (issue 25).

    python benchmarks/first_call.py [--drafters none,pld,...] [--new-tokens 64] [--out benchmarks/results/first_call_<machine>.json]

One process per state of JAX's persistent compilation cache, on one fresh cache directory: "cold" (empty:
every drafter's program is traced, lowered and compiled) then "warm" (a new process, as after `make demo` or a
notebook restart: the compiled programs are read back from the cache). In each, every drafter's program is
first traced and lowered alone (trace_lower_s: the part no compilation cache saves), then its first `generate`
(batch 1) is split into compile_s (trace + lower + compile, or + the cache read) and run_s, then a second
identical call (run only: the executable is kept in the process).
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import machine  # noqa: E402

DRAFTERS = "none,pld,lookahead,medusa,clover2,eagle,eagle3,early-exit"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."

CHILD = r"""
import json, sys, time
import specjax
target = specjax.load("default")
from specjax import api
for d in sys.argv[1].split(","):
  t = time.perf_counter()
  ids = api.encode_prompts(target, [sys.argv[2]], True, False)
  api.lower(target, ids, max_new_tokens=int(sys.argv[3]), drafter=d)     # trace + lower alone (not kept)
  lower = time.perf_counter() - t
  t = time.perf_counter()
  g = specjax.generate(target, [sys.argv[2]], max_new_tokens=int(sys.argv[3]), drafter=d)
  call = time.perf_counter() - t
  again = specjax.generate(target, [sys.argv[2]], max_new_tokens=int(sys.argv[3]), drafter=d)
  print(json.dumps(dict(drafter=d, first_call_s=call, trace_lower_s=lower, compile_s=g.compile_s, run_s=g.wall_s, second_call_run_s=again.wall_s,
                        second_call_compile_s=again.compile_s, tau=g.tau[0], new_tokens=g.new_tokens[0])), flush=True)
"""


def slug(cpu: str, cores: int) -> str:
  return re.sub(r"[^a-z0-9]+", "-", cpu.lower().replace("(r)", "").replace("processor", "")).strip("-") + f"-{cores}c"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--drafters", default=DRAFTERS)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  m = machine()
  out = pathlib.Path(a.out or pathlib.Path(__file__).parent / "results" / f"first_call_{slug(m['cpu'], m['cores'])}.json")
  res = dict(machine=m, command=" ".join(sys.argv), new_tokens=a.new_tokens, prompt=PROMPT, runs={})
  with tempfile.TemporaryDirectory() as cache:
    env = dict(os.environ, SPECJAX_COMPILATION_CACHE=cache)
    for run in ("cold", "warm"):
      res["runs"][run] = dict(load_before=os.getloadavg(), drafters={})
      s = time.perf_counter()
      p = subprocess.Popen([sys.executable, "-c", CHILD, a.drafters, PROMPT, str(a.new_tokens)], env=env,
                           stdout=subprocess.PIPE, text=True)
      for line in p.stdout:
        r = json.loads(line)
        res["runs"][run]["drafters"][r.pop("drafter")] = r
        print(run, line.strip(), flush=True)
      if p.wait():
        raise SystemExit(f"the {run} process failed ({p.returncode})")
      res["runs"][run].update(process_s=time.perf_counter() - s, load_after=os.getloadavg())
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=1) + "\n")
  print("wrote", out)


if __name__ == "__main__":
  main()
