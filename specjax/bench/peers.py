"""Peers measured beside specjax on the same weights and prompt token ids: Hugging Face transformers
greedy decoding ("hf") and its prompt lookup ("hf_pld"), in this process; llama.cpp (specjax.bench.llamacpp),
each method in a worker process (`WorkerPeer`), so that a crash there is reported, not fatal."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import time

PEERS = {"hf": ("hf", "hf_pld"),
         "llamacpp": ("llamacpp", "llamacpp_pld", "llamacpp_native", "llamacpp_native_pld")}


class PeerError(RuntimeError):
  """A peer method that failed (its worker crashed, or raised): the bench reports it and goes on."""


class WorkerPeer:
  """One peer method in its own process: argv + [job as JSON]; the worker prints {"ready", "info"} once
  loaded, then one JSON reply line per JSON request line (protocol: specjax.bench.llamacpp_worker)."""

  def __init__(self, name: str, argv: list[str], job: dict):
    self.name = name
    self.stderr = tempfile.TemporaryFile(mode="w+")     # kept for the tail quoted in a crash's error
    self.proc = subprocess.Popen([*argv, json.dumps(job)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.stderr, text=True)
    self.info = self._reply()["info"]

  def run(self, ids: list[int], max_new_tokens: int) -> dict:
    try:
      self.proc.stdin.write(json.dumps({"ids": list(ids), "max_new_tokens": max_new_tokens}) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass                              # died already: _reply says how
    return self._reply()

  def _reply(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      rc = self.proc.wait()
      how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
      self.stderr.seek(0)
      tail = " | ".join(self.stderr.read().strip().splitlines()[-3:])
      raise PeerError(f"{self.name}: the worker {how}" + (f" (stderr: {tail})" if tail else ""))
    r = json.loads(line)
    if "error" in r:
      raise PeerError(f"{self.name}: {r['error']}")
    return r

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()           # the worker's request loop ends at end of input
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.stderr.close()


class HFPeer:
  """transformers greedy decoding and prompt lookup on the same weights (PyTorch, CPU, float32)."""

  def __init__(self, model_path: str, *, eos_ids: list[int]):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(os.cpu_count() or 1)
    p = pathlib.Path(model_path)
    if p.is_dir():
      kw = dict(pretrained_model_name_or_path=str(p))
    elif p.suffix == ".gguf" and p.exists():
      kw = dict(pretrained_model_name_or_path=str(p.parent), gguf_file=p.name)
    else:
      raise ValueError(f"--peers hf needs the model as a .gguf file or a Hugging Face directory, got {model_path!r}")
    # transformers' GGUF conversion draws its own progress bars on stderr; keep them out of ours.
    with contextlib.redirect_stderr(io.StringIO()):
      model = AutoModelForCausalLM.from_pretrained(**kw, dtype=torch.float32)
    self.torch = torch
    self.model = model.eval()
    self.eos_ids = list(eos_ids)
    self.forwards = 0
    self.model.register_forward_hook(self._count)

  def _count(self, *_):
    self.forwards += 1

  def run(self, ids: list[int], *, max_new_tokens: int, temperature: float, seed: int,
          lookup: tuple[int, int] | None = None) -> dict:
    """lookup: (prompt_lookup_num_tokens, max_matching_ngram_size) for prompt lookup, None for plain."""
    from transformers import GenerationConfig
    torch = self.torch
    kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=self.eos_ids,
              pad_token_id=self.eos_ids[0] if self.eos_ids else 0)
    if temperature > 0:
      kw.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
      kw.update(do_sample=False)
    if lookup is not None:
      kw.update(prompt_lookup_num_tokens=lookup[0], max_matching_ngram_size=lookup[1])
    gc = GenerationConfig(**kw)
    x = torch.tensor([ids], dtype=torch.long)
    torch.manual_seed(seed)
    self.forwards = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
      out = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc)
    wall = time.perf_counter() - t0
    new = out[0, len(ids):].tolist()
    return {"token_ids": new, "new_tokens": len(new), "target_forwards": self.forwards, "wall_s": wall}
