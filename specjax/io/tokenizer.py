"""Tokenizer (Hugging Face `tokenizers`) and chat templates rendered in a jinja2 sandbox."""
from __future__ import annotations

import datetime
import json
import pathlib

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer as _HFTokenizer, decoders, models, pre_tokenizers

# GGUF token_type values for control and user-defined tokens.
_SPECIAL_TYPES = (3, 4)
# llama.cpp pre-tokenizer names whose regex splits digits one by one before the GPT-2 regex.
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell")


def _raise(msg):
  raise jinja2.exceptions.TemplateError(msg)


class Tokenizer:
  def __init__(self, tok: _HFTokenizer, *, eos_ids: list[int], bos_id: int | None = None,
               add_bos: bool = False, chat_template: str | None = None):
    self._tok = tok
    self.eos_ids = list(eos_ids)
    self.bos_id = bos_id
    self.add_bos = add_bos
    self.chat_template = chat_template
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_gguf_spec(cls, spec: dict) -> "Tokenizer":
    vocab = {t: i for i, t in enumerate(spec["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in spec["merges"]]
    tok = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if spec.get("pre") in _DIGIT_SPLIT_PRE:
      tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
      tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(spec["tokens"], spec["token_type"]) if ty in _SPECIAL_TYPES]
    tok.add_special_tokens(special)
    return cls(tok, eos_ids=spec["eos_ids"], bos_id=spec["bos_id"], add_bos=spec["add_bos"],
               chat_template=spec["chat_template"])

  @classmethod
  def from_hf_dir(cls, d: pathlib.Path) -> "Tokenizer":
    path = d / "tokenizer.json"
    if not path.exists():
      raise FileNotFoundError(f"{d}: tokenizer.json is missing")
    tok = _HFTokenizer.from_file(str(path))
    cfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").exists() else {}
    template = cfg.get("chat_template")
    if (d / "chat_template.jinja").exists():
      template = (d / "chat_template.jinja").read_text()
    eos_ids = []
    gen = json.loads((d / "generation_config.json").read_text()) if (d / "generation_config.json").exists() else {}
    e = gen.get("eos_token_id")
    eos_ids += e if isinstance(e, list) else ([e] if e is not None else [])
    name = cfg.get("eos_token")
    if isinstance(name, dict):
      name = name.get("content")
    if name is not None and tok.token_to_id(name) is not None:
      eos_ids.append(tok.token_to_id(name))
    if not eos_ids:
      conf = json.loads((d / "config.json").read_text())
      e = conf.get("eos_token_id")
      eos_ids += e if isinstance(e, list) else ([e] if e is not None else [])
    bos = cfg.get("bos_token")
    if isinstance(bos, dict):
      bos = bos.get("content")
    bos_id = tok.token_to_id(bos) if bos else None
    return cls(tok, eos_ids=sorted(set(eos_ids)), bos_id=bos_id, add_bos=bool(cfg.get("add_bos_token", False)),
               chat_template=template)

  def encode(self, text: str) -> list[int]:
    ids = self._tok.encode(text, add_special_tokens=False).ids
    if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_text(self, i: int) -> str | None:
    return self._tok.id_to_token(int(i))

  def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Renders messages with the model's chat template in jinja2's immutable sandbox."""
    if not self.chat_template:
      raise ValueError("this model has no chat template; pass chat=False")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    tpl = env.from_string(self.chat_template)
    bos = self.token_text(self.bos_id) if self.bos_id is not None else ""
    eos = self.token_text(self.eos_ids[0]) if self.eos_ids else ""
    return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                      bos_token=bos, eos_token=eos)
