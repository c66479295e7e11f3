"""Time per drafter training step with the target's features read from disk (the default) and computed on
the fly inside the step (`--features online`), on the default model, plus the one-off cost of extracting
the features to disk. The same sequences (the target's stored answers to the shipped prompt mix), the same
batches; the first step of each (compilation) is not timed.

    nice -n 5 python benchmarks/train_features.py --drafter eagle3 --prompts 24 --steps 4
"""
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np

from common import parser, save


def main():
  ap = parser(__doc__, "benchmarks/results/train_features.json")
  ap.add_argument("--drafter", default="eagle3")
  ap.add_argument("--prompts", type=int, default=24)
  ap.add_argument("--steps", type=int, default=4, help="timed steps of each (after one untimed)")
  ap.add_argument("--batch", type=int, default=4)
  a = ap.parse_args()

  import specjax
  from specjax.train import data as data_lib, loop

  t = specjax.load(a.model, dtype=a.dtype)
  c = loop.TrainConfig(drafter=a.drafter, steps=1000, batch=a.batch).resolved()
  recipe_cls = loop.RECIPES[a.drafter]
  capture = recipe_cls.capture_for(t.cfg, c)
  records = data_lib.training_prompts(None)
  with tempfile.TemporaryDirectory() as tmp:
    seqs = {}
    for held in (False, True):
      items = data_lib.encode(t, data_lib.select(records, a.prompts if not held else 4, heldout=held))
      seqs[held] = data_lib.sequences(t, items, pathlib.Path(tmp) / f"seq{held}.jsonl", progress=False)
    if any(len(s["answer"]) == 0 for s in seqs[False]):
      raise SystemExit("answers missing")
    kw = dict(full=recipe_cls.full, capture=capture, progress=False)
    t0 = time.perf_counter()
    disk = data_lib.features(t, seqs[False], pathlib.Path(tmp) / "feat", **kw)
    extract_s = time.perf_counter() - t0
    held = data_lib.features(t, seqs[True], None, **kw)
    t0 = time.perf_counter()
    online = data_lib.features(t, seqs[False], None, states=False, **kw)
    small_s = time.perf_counter() - t0
    stored_bytes = sum(f.stat().st_size for f in (pathlib.Path(tmp) / "feat").glob("*.npz"))
  res = {"drafter": a.drafter, "batch": a.batch, "sequences": len(seqs[False]), "positions": len(disk),
         "extract_s": extract_s, "small_columns_s": small_s, "disk_bytes": stored_bytes}
  for name, feat in (("disk", disk), ("online", online)):
    recipe = recipe_cls(t, feat, held, c)
    opt = loop.optimizer(c)
    params, opt_state, consts, tparams = loop.initial_state(recipe, opt, None)
    step, put = loop.step_function(recipe, opt, None, params, opt_state, tparams)
    times, positions = [], 0
    for s in range(a.steps + 1):
      units = loop.batch_indices(recipe.units, s, c.batch, c.seed)
      t0 = time.perf_counter()
      params, opt_state, loss, _ = step(params, opt_state, put(recipe.batch(units, s)), consts, tparams)
      jax.block_until_ready(loss)
      if s:
        times.append(time.perf_counter() - t0)
        positions += int(sum(e - b for b, e in recipe.spans_train[units]))
    res[name] = {"step_s_median": statistics.median(times), "step_s": times, "loss": float(loss),
                 "positions_per_s": positions / sum(times)}
    print(name, res[name], flush=True)
  res["same_loss"] = bool(np.isclose(res["disk"]["loss"], res["online"]["loss"], rtol=1e-5))
  save(a.out, res)


if __name__ == "__main__":
  main()
