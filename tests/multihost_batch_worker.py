"""Run by test_batch.py as one of two processes joined by jax.distributed (CPU, gloo), 2 fake devices each:
a batch job in which each process answers its own lines on a mesh of its own devices. Process 1 then
damages its shard as a kill -9 would (last record lost, a torn line) and both rerun the same job."""
from __future__ import annotations

import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

from specjax.parallel import hosts  # noqa: E402

hosts.initialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

import specjax  # noqa: E402
from specjax.batch import run_batch, shard_path  # noqa: E402
from specjax.testing import tiny_target  # noqa: E402

inp, out = pathlib.Path(sys.argv[4]), pathlib.Path(sys.argv[5])
t = tiny_target(seed=0, scale=10.0)
t.tokenizer.chat_template = sys.argv[6]
kw = dict(target=t, batch_size=2, max_new_tokens=6, drafter="pld", progress=False,
          mesh=specjax.make_mesh(data=2, devices=jax.local_devices()))
first = run_batch(inp, out, **kw)
if jax.process_index() == 1:
  shard = shard_path(out, 1, 2)
  lines = shard.read_bytes().splitlines(keepends=True)
  shard.write_bytes(b"".join(lines[:-2]) + lines[-2][:10])
second = run_batch(inp, out, **kw)
print(json.dumps({"process": jax.process_index(), "first": first, "second": second}))
