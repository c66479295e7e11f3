"""Multi-host start-up: jax.distributed from explicit flags, or detected from the environment (TPU VMs,
SLURM, ...). Call before anything else touches JAX's devices; afterwards jax.devices() spans every
process and `make_mesh` builds one mesh across them."""
from __future__ import annotations

AUTO = "auto"


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """coordinator "HOST:PORT" with num_processes and process_id, or "auto" (jax.distributed detects the
  cluster), or None (one process: nothing to do). Returns whether jax.distributed was started."""
  import jax
  if coordinator is None:
    if num_processes is not None or process_id is not None:
      raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT (or --coordinator auto)")
    return False
  # CPU devices of different processes talk through gloo (the default has no cross-process collectives);
  # the setting concerns only the CPU backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator == AUTO:
    jax.distributed.initialize()
    return True
  if num_processes is None or process_id is None:
    raise ValueError("--coordinator HOST:PORT needs --num-processes N and --process-id I")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process-id must be in [0, {num_processes - 1}], got {process_id}")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  return True
