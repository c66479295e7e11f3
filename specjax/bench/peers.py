"""Peers measured beside specjax on the same weights and prompt token ids: Hugging Face transformers
greedy decoding ("hf") and its prompt lookup ("hf_pld")."""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import time

PEERS = {"hf": ("hf", "hf_pld")}


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
