"""Run by test_parallel.py as one of two processes joined by jax.distributed (CPU, gloo), 2 fake devices
each: one mesh (data=2, model=2) across both processes. Prints the sharded outputs and, for comparison,
this process's one-device outputs."""
from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

from specjax.parallel import hosts  # noqa: E402

hosts.initialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

import specjax  # noqa: E402
from specjax import api  # noqa: E402
from specjax.testing import tiny_target  # noqa: E402

t = tiny_target(seed=0, scale=10.0)
prompts = [[3, 4, 5, 3, 4, 5, 6], [7, 8, 9, 10, 7, 8], [11, 3, 11, 3]]
mesh = specjax.make_mesh(data=2, model=2)
sharded = api.generate(t, prompts, max_new_tokens=10, chat=False, drafter="pld", mesh=mesh).token_ids
single = api.generate(t, prompts, max_new_tokens=10, chat=False, drafter="pld").token_ids
print(json.dumps({"process": jax.process_index(), "devices": len(jax.devices()), "local": len(jax.local_devices()),
                  "processes_in_mesh": len({d.process_index for d in mesh.devices.flat}),
                  "sharded": sharded, "single": single}))
