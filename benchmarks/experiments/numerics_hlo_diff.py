"""Does a change alter what XLA compiles on this backend? (It showed that pinning every matmul's numerics did not.)

    python benchmarks/experiments/numerics_hlo_diff.py BASE_CHECKOUT NEW_CHECKOUT

Compiles, in each checkout (a subprocess each), the decode program of none, pld, lookahead, medusa, eagle3 and clover2 (random weights) on a random model of
SmolLM2's layer shapes (4 layers, vocab 4096), float32 and bfloat16 weights, and compares the optimised
HLO instruction lines after removing what only labels an instruction (metadata, operand_precision,
algorithm). Identical instructions mean identical kernels, so the change cannot move CPU speed.
"""
import hashlib
import json
import re
import subprocess
import sys

SMOL = dict(vocab=4096, hidden=576, layers=4, heads=9, kv_heads=3, head_dim=64, ffn=1536, tie_embeddings=True,
            max_context=1024)


def child():
  import jax
  import jax.numpy as jnp
  from specjax.program import Program, Settings
  from specjax.drafters.clover import Clover2
  from specjax.drafters.eagle import Eagle3
  from specjax.drafters.medusa import Medusa
  from specjax.testing import tiny_target
  out = {}
  for dt in ("float32", "bfloat16"):
    t = tiny_target(seed=0, dtype=jnp.dtype(dt), **SMOL)
    drafters = {"none": "none", "pld": "pld", "lookahead": "lookahead", "medusa": Medusa.untrained(t, seed=4, nodes=6),
                "eagle3": Eagle3.untrained(t, seed=4, draft_vocab=32), "clover2": Clover2.untrained(t, seed=4)}
    for name, drafter in drafters.items():
      program = Program(t)
      call = program.prepare([[5, 6, 7, 8, 5, 6]], Settings.make(max_new_tokens=16, drafter=drafter, precision="exact"))
      text = program.executable(call, jax.random.key(0))[0].as_text()
      lines = [re.sub(r", (metadata=\{[^}]*\}|operand_precision=\{[a-z,]*\}|algorithm=[a-z0-9_]+)", "", x)
               for x in text.splitlines() if re.match(r"\s*(ROOT )?%", x)]
      out[f"{dt}/{name}"] = lines
  print(json.dumps(out))


def main(base, new):
  res = {}
  for name, path in (("base", base), ("new", new)):
    p = subprocess.run([sys.executable, __file__, "--child"], env={"PYTHONPATH": path, "JAX_PLATFORMS": "cpu",
                       "SPECJAX_COMPILATION_CACHE": "0", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    res[name] = json.loads(p.stdout.splitlines()[-1])
  for k in res["base"]:
    a, b = res["base"][k], res["new"][k]
    same = sum(x == y for x, y in zip(a, b))
    h = lambda ls: hashlib.sha256("\n".join(ls).encode()).hexdigest()[:12]
    print(f"{k}: {len(a)} / {len(b)} instructions, {same} identical, hash {h(a)} / {h(b)}")


if __name__ == "__main__":
  child() if sys.argv[1:] == ["--child"] else main(*sys.argv[1:3])
