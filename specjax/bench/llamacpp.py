"""llama.cpp as a peer (`--peers llamacpp`, through llama-cpp-python from the `bench` extra), on the same GGUF
and the same prompt token ids as specjax:

  llamacpp             a float32 copy of the GGUF (every tensor dequantised; made once, cached), greedy
  llamacpp_pld         the same copy with llama-cpp-python's prompt lookup (LlamaPromptLookupDecoding)
  llamacpp_native      the GGUF as it is (the default model's: Q4_1), greedy
  llamacpp_native_pld  the GGUF as it is, prompt lookup

Each method runs in its own worker process (llamacpp_worker.py, a `WorkerPeer`): a build that dies on this CPU
(illegal instruction, segfault) becomes an error row of the report, not the end of the benchmark."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import sys

from specjax.bench.peers import PeerError, WorkerPeer

WORKER = [sys.executable, str(pathlib.Path(__file__).with_name("llamacpp_worker.py"))]
INSTALL_HINT = ("CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -e '.[bench]' in the specjax checkout (the "
                "specjax[bench] extra; pip compiles llama.cpp, about 6 minutes; GGML_NATIVE=OFF builds it portable, "
                "since a native build can die with an illegal instruction on the Q4_1 file)")


def require():
  """Fails before any long work when llama-cpp-python is missing."""
  if importlib.util.find_spec("llama_cpp") is None:
    raise ValueError(f"--peers llamacpp needs the llama-cpp-python package; install it with: {INSTALL_HINT}")


def cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "specjax" / "llamacpp"


def f32_copy(src, out_dir=None) -> pathlib.Path:
  """A float32 GGUF with src's metadata and every tensor dequantised, in out_dir (default: cache_dir()),
  named by src's path, size and mtime so a changed file is converted again; reused when already there."""
  import gguf
  import numpy as np

  src = pathlib.Path(src)
  st = src.stat()
  tag = hashlib.sha1(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
  out_dir = pathlib.Path(out_dir) if out_dir is not None else cache_dir()
  dst = out_dir / f"{src.stem}.{tag}.f32.gguf"
  if dst.exists():
    return dst
  out_dir.mkdir(parents=True, exist_ok=True)
  r = gguf.GGUFReader(str(src))
  tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
  w = gguf.GGUFWriter(str(tmp), r.fields["general.architecture"].contents())
  for f in r.fields.values():
    # GGUF.* are the header's own fields; the writer adds the architecture and its own (default) alignment.
    if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.alignment"):
      continue
    if f.name == "general.file_type":
      w.add_file_type(gguf.LlamaFileType.ALL_F32)
      continue
    vtype = f.types[0]
    w.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
  for t in r.tensors:     # dequantize: quantised rows of bytes -> float32 [rows, cols] (numpy order, as written)
    w.add_tensor(t.name, np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  os.replace(tmp, dst)
  return dst


def start(methods: list[str], model: str, *, eos_ids: list[int], n_ctx: int, lookup: tuple[int, int],
          temperature: float, seed: int, errors: dict) -> dict[str, WorkerPeer]:
  """One started worker per method (of PEERS["llamacpp"]); a method whose worker fails to start goes to
  errors (method -> message) instead."""
  if not str(model).endswith(".gguf"):
    raise ValueError(f"--peers llamacpp needs the model as a .gguf file, got {model!r}")
  f32 = f32_copy(model) if any(not m.startswith("llamacpp_native") for m in methods) else None
  n_ctx = -(-n_ctx // 256) * 256
  workers = {}
  for m in methods:
    job = {"model": str(model if m.startswith("llamacpp_native") else f32), "n_ctx": n_ctx,
           "lookup": list(lookup) if m.endswith("_pld") else None, "temperature": float(temperature),
           "seed": seed, "eos_ids": list(eos_ids)}
    try:
      workers[m] = WorkerPeer(m, WORKER, job)
    except PeerError as e:
      errors[m] = str(e)
  return workers
