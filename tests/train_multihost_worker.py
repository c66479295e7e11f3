"""Run by test_train_multihost.py: one of N processes joined by jax.distributed (CPU, gloo; N=1: one
process alone), 8/N fake devices each, one mesh (data=4, model=2) over all 8. Makes the features of a tiny
random target on that mesh (each process caching its own, hosts.process_dir), trains Medusa on it with
`loop.fit` (orbax checkpoints in a directory the processes share; "resume": stopped after 2 steps and
resumed from the checkpoint) and writes, from every process,
OUT/result-<process>.npz: the final weights, and the training features' hidden states."""
from __future__ import annotations

import os
import sys

coordinator, processes, process, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resume = sys.argv[5:] == ["resume"]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // processes}"

import dataclasses  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from specjax.parallel import hosts  # noqa: E402

if processes > 1:
  hosts.initialize(coordinator, processes, process, timeout=120)

import specjax  # noqa: E402
from specjax.testing import tiny_target  # noqa: E402
from specjax.train import data as data_lib  # noqa: E402
from specjax.train import loop  # noqa: E402

out = pathlib.Path(out)
mesh = specjax.make_mesh(data=4, model=2)
assert len({d.process_index for d in mesh.devices.flat}) == processes
t = dataclasses.replace(tiny_target(seed=3, scale=6.0, eos_id=999), mesh=mesh)
rng = np.random.default_rng(0)
seqs = [{"id": str(i), "prompt": rng.integers(2, 64, rng.integers(3, 12)).tolist(),
         "answer": rng.integers(2, 64, rng.integers(20, 40)).tolist()} for i in range(24)]
cache = hosts.process_dir(out / "cache")
train = data_lib.features(t, seqs[:20], cache / "train", full=True, progress=False)
held = data_lib.features(t, seqs[20:], cache / "held", full=True, progress=False)
c = loop.TrainConfig(drafter="medusa", steps=4, batch=64, heads=2, draft_vocab=32, eval_positions=128, nodes=6,
                     warmup=1, save_every=2, eval_every=1, lr=1e-2)
if resume:
  loop.fit(t, train, held, c, out / "run", stop_after=2, progress=False, log=lambda m: None)
d, summary = loop.fit(t, train, held, c, out / "run", progress=False, log=lambda m: None)
w = jax.tree.leaves(d.params)
np.savez(out / f"result-{jax.process_index()}.npz", hidden=np.asarray(train.hidden, np.float32),
         **{f"w{i}": np.asarray(x, np.float32) for i, x in enumerate(w)})
hosts.barrier("specjax-test-end")
