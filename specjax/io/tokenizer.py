"""Tokenizer (Hugging Face `tokenizers`); the chat-template engine lives in specjax/io/chat_template.py."""
from __future__ import annotations

import functools
import pathlib
import re

import jinja2
from tokenizers import AddedToken, Regex, Tokenizer as _HFTokenizer, decoders, models, pre_tokenizers

from specjax.io import jsonfile
from specjax.io.chat_template import (MAX_TEMPLATE_CHARS, ChatTemplateError, ChatTemplateSecurityError,
                                      _compile_template, _too_big, choose_chat_template)

# GGUF token_type values.
_CONTROL, _USER_DEFINED = 3, 4
# llama.cpp pre-tokenizer names whose regex splits digits one by one before the GPT-2 regex.
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell")
# llama.cpp pre-tokenizer names with their own split regex (the same regexes transformers uses for GGUF files);
# any other name gets the GPT-2 regex of ByteLevel.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PRE = {
    **{name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3")},
    **{name: _QWEN2_SPLIT for name in ("qwen2", "deepseek-r1-qwen", "megrez")},
    "tekken": _TEKKEN_SPLIT,
}


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table of byte-level BPE."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {b: chr(c) for b, c in zip(bs, cs)}


def _strings(x):
  """Every string inside nested dicts / lists / tuples (values, not keys)."""
  if isinstance(x, str):
    yield x
  elif isinstance(x, dict):
    for v in x.values():
      yield from _strings(v)
  elif isinstance(x, (list, tuple)):
    for v in x:
      yield from _strings(v)


def _map_strings(x, f):
  if isinstance(x, str):
    return f(x)
  if isinstance(x, dict):
    return {k: _map_strings(v, f) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return type(x)(_map_strings(v, f) for v in x)
  return x


def _unused_chars(n: int, used: set[str]) -> list[str]:
  """n characters of Unicode's private use planes that do not occur in `used`."""
  out, c = [], 0xF0000
  while len(out) < n:
    if chr(c) not in used:
      out.append(chr(c))
    c += 1
  return out


class Tokenizer:
  def __init__(self, tok: _HFTokenizer, *, eos_ids: list[int], bos_id: int | None = None,
               add_bos: bool = False, chat_template: str | None = None, chat_templates: dict | None = None):
    self._tok = tok
    self.eos_ids = list(eos_ids)
    self.bos_id = bos_id
    self.add_bos = add_bos
    self.chat_template = chat_template
    self.chat_templates = dict(chat_templates or {})     # every named template the model ships
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_gguf_spec(cls, spec: dict, chat_template: str | None = None) -> "Tokenizer":
    """Byte-level BPE from GGUF metadata, built as llama.cpp (and transformers' GGUF reader) do: the split
    regex named by `pre`, control tokens (type 3) as special tokens, user-defined tokens (type 4) as
    ordinary added tokens that are always matched whole."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # Tokens are stored in the byte alphabet; respell any that are not (as transformers does).
    tokens = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in spec["tokens"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in spec["merges"]]
    tok = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    pre = spec.get("pre")
    if pre in _SPLIT_PRE:
      tok.pre_tokenizer = pre_tokenizers.Sequence([
          pre_tokenizers.Split(Regex(_SPLIT_PRE[pre]), behavior="isolated"),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre in _DIGIT_SPLIT_PRE:
      tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
      tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    types = spec["token_type"]
    # A "control" token outside the byte alphabet is a mislabel (it would grow the vocabulary); skip it.
    control = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(spec["tokens"], types) if ty == _CONTROL and set(t) <= alphabet]
    tok.add_special_tokens(control)
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    if user:
      tok.add_tokens(user)
    template, named = choose_chat_template(spec["chat_template"], chat_template, spec.get("source", "GGUF file"))
    return cls(tok, eos_ids=spec["eos_ids"], bos_id=spec["bos_id"], add_bos=spec["add_bos"],
               chat_template=template, chat_templates=named)

  @classmethod
  def from_hf_dir(cls, d: pathlib.Path, chat_template: str | None = None) -> "Tokenizer":
    """tokenizer.json + tokenizer_config.json (+ generation_config.json, chat_template.jinja).
    chat_template: the name of one of the model's named templates (default: "default")."""
    path = d / "tokenizer.json"
    if not path.exists():
      raise FileNotFoundError(f"{d}: tokenizer.json is missing")
    try:
      tok = _HFTokenizer.from_file(str(path))
    except Exception as e:            # the Rust library raises a bare Exception on a bad file
      raise ValueError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0] if str(e) else e!r})") from None
    vocab = tok.get_vocab_size(with_added_tokens=True)

    def obj(name):
      f = d / name
      c = jsonfile.read(f) if f.exists() else {}
      if not isinstance(c, dict):
        raise ValueError(f"{f}: expected a JSON object, got {jsonfile.show(c)}")
      return c

    def ids(v, f, key):
      """A token id or a list of them, each checked against the vocabulary."""
      vs = v if isinstance(v, list) else [] if v is None else [v]
      for x in vs:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab:
          raise ValueError(f"{f}: {key} must be token ids in [0, {vocab - 1}], got {jsonfile.show(v)}")
      return vs

    def token_name(v, f, key):
      v = v.get("content") if isinstance(v, dict) else v
      if v is not None and not isinstance(v, str):
        raise ValueError(f"{f}: {key} must be a token string, got {jsonfile.show(v)}")
      return v

    cfg = obj("tokenizer_config.json")
    raw = cfg.get("chat_template")
    if (d / "chat_template.jinja").exists():
      raw = jsonfile.decode_utf8((d / "chat_template.jinja").read_bytes(), str(d / "chat_template.jinja"))
    template, named = choose_chat_template(raw, chat_template, str(d / "tokenizer_config.json"))
    eos_ids = ids(obj("generation_config.json").get("eos_token_id"), d / "generation_config.json", "eos_token_id")
    name = token_name(cfg.get("eos_token"), d / "tokenizer_config.json", "eos_token")
    if name is not None and tok.token_to_id(name) is not None:
      eos_ids.append(tok.token_to_id(name))
    if not eos_ids:
      eos_ids = ids(obj("config.json").get("eos_token_id"), d / "config.json", "eos_token_id")
    bos = token_name(cfg.get("bos_token"), d / "tokenizer_config.json", "bos_token")
    bos_id = tok.token_to_id(bos) if bos else None
    if "add_bos_token" in cfg:
      if not isinstance(cfg["add_bos_token"], bool):
        raise ValueError(f"{d / 'tokenizer_config.json'}: add_bos_token must be true or false, got "
                         f"{jsonfile.show(cfg['add_bos_token'])}")
      add_bos = cfg["add_bos_token"]
    else:
      # No explicit flag: transformers adds whatever tokenizer.json's post-processor puts in front of the
      # text (e.g. Llama 3's <|begin_of_text|>). Keep that BOS; never append an EOS to a prompt.
      probe = tok.encode("a", add_special_tokens=True).ids
      plain = tok.encode("a", add_special_tokens=False).ids
      add_bos = len(probe) > len(plain) and probe[1:1 + len(plain)] == plain
      if add_bos:
        bos_id = probe[0]
    return cls(tok, eos_ids=sorted(set(eos_ids)), bos_id=bos_id, add_bos=add_bos, chat_template=template,
               chat_templates=named)

  def encode(self, text: str, allow_special: bool = True) -> list[int]:
    """Token ids of `text`, after the BOS when this tokenizer adds one. Special-token text in it (e.g.
    "<|im_end|>") becomes that special token, as in transformers, unless allow_special=False: then it
    is ordinary text."""
    return self._with_bos((self._tok if allow_special else self._plain).encode(text, add_special_tokens=False).ids)

  def _with_bos(self, ids: list[int]) -> list[int]:
    if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
      ids = [self.bos_id] + ids
    return ids

  @functools.cached_property
  def _plain(self) -> _HFTokenizer:
    """This tokenizer, reading special-token text as ordinary text."""
    t = _HFTokenizer.from_str(self._tok.to_str())
    t.encode_special_tokens = True
    return t

  @functools.cached_property
  def _specials(self) -> tuple[dict[str, int], re.Pattern]:
    """({text: id} of the special tokens, a pattern finding them as the tokenizer does: longest first,
    taking the whitespace a token strips on its left or right)."""
    added = {a.content: (i, a) for i, a in self._tok.get_added_tokens_decoder().items() if a.special}
    alts = [(r"\s*" if a.lstrip else "") + f"({re.escape(t)})" + (r"\s*" if a.rstrip else "")
            for t, (_, a) in sorted(added.items(), key=lambda kv: -len(kv[0]))]
    return {t: i for t, (i, _) in added.items()}, re.compile("|".join(alts) or r"(?!)")

  def encode_chat(self, messages: list[dict], *, allow_special: bool = False, **render_kwargs) -> list[int]:
    """render_chat(messages) as token ids. The template's own markers are special tokens; special-token
    text inside the messages (a user typing "<|im_end|>") is ordinary text unless allow_special, so no
    one can close their turn and open another. Equals encode(render_chat(...)) when the messages hold no
    special-token text."""
    text = self.render_chat(messages, **render_kwargs)
    ids_of, pattern = self._specials
    typed = [t for t in ids_of if any(t in v for v in _strings(messages))]
    if allow_special or not typed:
      return self.encode(text)
    # Render again with each special text typed in the messages swapped for a private-use character:
    # every special token left in that rendering is then the template's own.
    marks = dict(zip(typed, _unused_chars(len(typed), set(text) | set(self.chat_template))))
    swap = re.compile("|".join(re.escape(t) for t in sorted(typed, key=len, reverse=True)))
    marked = self.render_chat(_map_strings(messages, lambda v: swap.sub(lambda m: marks[m.group()], v)),
                              **render_kwargs)
    unmark = str.maketrans({c: t for t, c in marks.items()})
    if marked.translate(unmark) != text:
      raise ValueError(f"the chat template changes message text that holds special-token text "
                       f"({', '.join(typed)}); remove that text from the prompt, or allow special tokens")
    ids, pos = [], 0
    for m in pattern.finditer(marked):
      ids += self._plain.encode(marked[pos:m.start()].translate(unmark), add_special_tokens=False).ids
      ids.append(ids_of[next(g for g in m.groups() if g is not None)])
      pos = m.end()
    ids += self._plain.encode(marked[pos:].translate(unmark), add_special_tokens=False).ids
    return self._with_bos(ids)

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_text(self, i: int) -> str | None:
    return self._tok.id_to_token(int(i))

  def require_chat_template(self, no_chat: str = "pass chat=False",
                            choose: str = "chat_template=NAME in specjax.load"):
    """Raises ValueError unless a chat template is selected; the hints say how to go without or pick one."""
    if self.chat_template:
      return
    if self.chat_templates:
      raise ValueError(f"the model's chat templates are all named ({', '.join(self.chat_templates)}), none "
                       f"'default'; choose one with {choose}, or {no_chat}")
    raise ValueError(f"the model has no chat template; {no_chat}")

  def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = True, tools=None,
                  documents=None, **template_kwargs) -> str:
    """Renders messages with the model's chat template in jinja2's immutable sandbox, as transformers'
    `apply_chat_template(..., tokenize=False)` does. Any failure is a ChatTemplateError (a ValueError
    and a jinja2 TemplateError) saying it came from the chat template: a template that reaches for
    unsafe attributes (ChatTemplateSecurityError), calls raise_exception(msg), does not compile, or
    builds more than MAX_TEMPLATE_CHARS characters."""
    self.require_chat_template()
    if not isinstance(self.chat_template, str):
      raise ChatTemplateError(f"the chat template must be a string, got {type(self.chat_template).__name__}")
    try:
      tpl = _compile_template(self.chat_template)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise ChatTemplateError(f"the chat template does not compile (line {e.lineno}: {e.message})") from None
    except Exception as e:           # e.g. RecursionError on absurd nesting
      raise ChatTemplateError(f"the chat template does not compile ({type(e).__name__}: {e})") from None
    bos = self.token_text(self.bos_id) if self.bos_id is not None else ""
    eos = self.token_text(self.eos_ids[0]) if self.eos_ids else ""
    kwargs = dict(bos_token=bos, eos_token=eos)
    kwargs.update(template_kwargs)
    out, n = [], 0
    try:
      for piece in tpl.generate(messages=messages, tools=tools, documents=documents,
                                add_generation_prompt=add_generation_prompt, **kwargs):
        n += len(piece)
        if n > MAX_TEMPLATE_CHARS:
          _too_big("an output")
        out.append(piece)
    except ChatTemplateError:
      raise
    except jinja2.exceptions.SecurityError as e:
      raise ChatTemplateSecurityError(f"the chat template tried something unsafe: {e}") from None
    except jinja2.exceptions.TemplateError as e:     # raise_exception(...), undefined names, ...
      raise ChatTemplateError(f"the chat template raised an error: {e}") from None
    except Exception as e:           # TypeError, ZeroDivisionError, RecursionError, MemoryError, ...
      raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
    return "".join(out)
