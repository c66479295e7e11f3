"""Multi-host start-up: jax.distributed from explicit flags, or detected from the environment (TPU VMs,
SLURM, ...). Call before anything else touches JAX's devices; afterwards jax.devices() spans every
process and `make_mesh` builds one mesh across them.

Start-up waits for every process at most `timeout` seconds. Then the process ends with one line on stderr
and status 2: JAX itself, at its own deadline, aborts the process with a C++ stack dump, from a call that
blocks the main thread in native code (so no exception can be raised instead).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

import jax

AUTO = "auto"
DEFAULT_TIMEOUT = 300.0     # seconds; jax.distributed's own default


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> bool:
  """coordinator "HOST:PORT" with num_processes and process_id, or "auto" (jax.distributed detects the
  cluster), or None (one process: nothing to do). Returns whether jax.distributed was started. timeout:
  seconds to wait for every process to start (see the module docstring)."""
  if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e6:
    raise ValueError(f"--init-timeout must be a number of seconds in (0, 1e6), got {timeout!r}")
  if coordinator is None:
    if num_processes is not None or process_id is not None:
      raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT (or --coordinator auto)")
    return False
  # CPU devices of different processes talk through gloo (the default has no cross-process collectives);
  # the setting concerns only the CPU backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator == AUTO:
    with _deadline(timeout, "the cluster's processes (detected from the environment)"):
      jax.distributed.initialize(initialization_timeout=int(timeout) + 60)
    return True
  if num_processes is None or process_id is None:
    raise ValueError("--coordinator HOST:PORT needs --num-processes N and --process-id I")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process-id must be in [0, {num_processes - 1}], got {process_id}")
  with _deadline(timeout, f"{num_processes} processes at {coordinator} (this is process {process_id})"):
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=int(timeout) + 60)   # ours ends the wait first
  return True


@contextlib.contextmanager
def _deadline(timeout: float, waiting_for: str):
  """Within: after `timeout` s, `_give_up` from a watchdog thread (the main thread is blocked in native code)."""
  timer = threading.Timer(timeout, _give_up, (timeout, waiting_for))
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def _give_up(timeout: float, waiting_for: str):
  """One line on stderr and exit status 2, at once."""
  message = (f"specjax: error: multi-host start-up timed out after {timeout:g} s waiting for {waiting_for}; start "
             "every process with the same --coordinator and --num-processes, or raise --init-timeout\n")
  try:
    sys.stderr.flush()
    os.write(2, message.encode())
  finally:
    os._exit(2)


# ----------------------------------------------------------------------------- after start-up
# Helpers for work that every process runs together (drafter training across processes): with one process
# each is trivial and touches nothing of jax.distributed.

def main_process() -> bool:
  """Whether this is process 0, the one that writes a run's shared outputs (logs, checkpoints' files)."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """Whether `flag` holds in any process (every process calls it, and every process gets the same answer)."""
  if jax.process_count() == 1:
    return bool(flag)
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray([bool(flag)]))))


def all_processes(flag: bool) -> bool:
  """Whether `flag` holds in every process (every process calls it)."""
  return not any_process(not flag)


def same_everywhere(value: str) -> bool:
  """Whether every process holds the same `value` (compared by its SHA-256; every process calls it)."""
  if jax.process_count() == 1:
    return True
  import hashlib

  import numpy as np
  from jax.experimental import multihost_utils
  digest = np.frombuffer(hashlib.sha256(value.encode()).digest(), np.uint8)
  return bool(np.all(multihost_utils.process_allgather(digest) == digest))


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier `name`."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def process_dir(base):
  """A directory of this process's own under `base` (`process-I-of-N`) when there are several processes,
  else `base`: what each process caches for itself (answers, features) without racing the others."""
  import pathlib
  base = pathlib.Path(base)
  n = jax.process_count()
  return base if n == 1 else base / f"process-{jax.process_index()}-of-{n}"
