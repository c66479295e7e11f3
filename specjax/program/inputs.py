"""What a generation is given: the target, and the prompts as token ids (text encoded, chat template applied)."""
from __future__ import annotations

import numpy as np

from specjax.checks import is_int
from specjax.io import Target
from specjax.io.prompts import check_text


def check_target(target) -> Target:
  """TypeError naming the argument unless `target` is a loaded model (an AttributeError deep inside otherwise)."""
  if not isinstance(target, Target):
    raise TypeError(f"target must be a loaded model, specjax.load(...) (a specjax.Target), got "
                    f"{type(target).__name__} {target!r:.60}")
  return target


def check_chat(chat, allow_special) -> None:
  if not isinstance(chat, bool) or not isinstance(allow_special, bool):
    raise ValueError(f"chat and allow_special must be True or False, got {chat!r}, {allow_special!r}")


def prompt_list(prompts) -> list:
  """The forms users pass -> a list of prompts, each a string or a sequence of token ids: a string; a
  list of strings and/or token-id lists; one flat list of token ids; a 1-D [L] or 2-D [B, L] integer
  array (B prompts of L ids); a 1-D array of strings."""
  if isinstance(prompts, str):
    return [prompts]
  if hasattr(prompts, "__array__") and hasattr(prompts, "ndim"):      # numpy or JAX array
    a = np.asarray(prompts)
    if a.dtype.kind in "iu" and a.ndim in (1, 2):
      return [a.tolist()] if a.ndim == 1 else a.tolist()
    if a.dtype.kind in "UO" and a.ndim == 1:
      return a.tolist()
    raise ValueError(f"a prompt array must hold token ids ([L] or [B, L] integers) or strings ([B]); got "
                     f"{a.dtype} of shape {a.shape}")
  if not isinstance(prompts, (list, tuple)):
    raise ValueError("prompts must be a string, a list of strings or of token-id lists, a list of token ids, "
                     f"or an integer array; got {type(prompts).__name__}")
  if prompts and all(is_int(t) for t in prompts):
    return [list(prompts)]              # one prompt given as a flat list of token ids
  return list(prompts)


def encode_prompts(target: Target, prompts, chat: bool, allow_special: bool = False) -> list[list[int]]:
  """Token ids of each prompt. Strings get the chat template when `chat`; special-token text typed in
  them (e.g. "<|im_end|>") is encoded as plain text unless allow_special (see Tokenizer.encode_chat)."""
  check_target(target)
  check_chat(chat, allow_special)
  prompts = prompt_list(prompts)
  if not prompts:
    raise ValueError("no prompts given")
  out = []
  for i, p in enumerate(prompts):
    if isinstance(p, str):
      if not p.strip():
        raise ValueError("empty prompt: every prompt needs some text")
      check_text(p, f"prompt {i}")
      tok = target.tokenizer
      if chat:
        ids = tok.encode_chat([{"role": "user", "content": p}], allow_special=allow_special)
      else:
        ids = tok.encode(p, allow_special=allow_special)
    elif isinstance(p, (list, tuple, np.ndarray)) and all(is_int(t) for t in p):
      ids = [int(t) for t in p]          # already token ids
    else:
      raise ValueError(f"prompt {i} must be a string or a list of integer token ids, got "
                       f"{type(p).__name__}{'' if not isinstance(p, (list, tuple)) else ' holding ' + _kinds(p)}")
    if not ids:
      raise ValueError("empty prompt: it encodes to no tokens")
    bad = [t for t in ids if not 0 <= t < target.cfg.vocab]
    if bad:
      raise ValueError(f"token ids out of the vocabulary (0..{target.cfg.vocab - 1}): {bad[:5]}")
    out.append(ids)
  return out


def _kinds(seq) -> str:
  return ", ".join(sorted({type(t).__name__ for t in seq}))


def check_fits(target: Target, prompt_tokens: int, max_new_tokens: int, drafter) -> None:
  """ValueError unless a prompt of `prompt_tokens` tokens, max_new_tokens and the draft depth fit the context."""
  ctx = target.cfg.max_context
  if prompt_tokens >= ctx:
    raise ValueError(f"prompt of {prompt_tokens} tokens does not fit the model's context of {ctx} tokens")
  room = prompt_tokens + max_new_tokens + drafter.max_depth + 1
  if room > ctx:
    most = ctx - prompt_tokens - drafter.max_depth - 1
    fix = (f"lower max_new_tokens to at most {most}" if most >= 1 else
           "no max_new_tokens fits: shorten the prompt or use a shallower draft (e.g. fewer num_tokens)")
    raise ValueError(f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) + draft depth "
                     f"({drafter.max_depth}) + 1 = {room} overflows the model's context of {ctx} tokens; {fix}")
