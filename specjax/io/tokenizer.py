"""Tokenizer (Hugging Face `tokenizers`) and chat templates rendered in a jinja2 sandbox."""
from __future__ import annotations

import datetime
import functools
import json
import pathlib

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, Tokenizer as _HFTokenizer, decoders, models, pre_tokenizers

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


def _raise(msg):
  raise jinja2.exceptions.TemplateError(msg)


# The chat-template environment mirrors transformers' `apply_chat_template` (same globals, filters and
# extensions), so templates render identically; it is jinja2's immutable sandbox throughout.

def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # jinja2's own tojson escapes <, >, & and ' for HTML; chat templates expect plain JSON.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _TemplateDict:
  """`dict(...)` in templates, without exposing the dict type itself."""
  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
  """`namespace(...)` that refuses underscore-prefixed attribute names."""
  def __init__(*args, **kwargs):
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check_name(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore-prefixed namespace attributes ({name!r})")


class _GenerationTag(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks): renders its body."""
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  env.globals["dict"] = _TemplateDict()
  env.globals["namespace"] = _TemplateNamespace
  return env.from_string(source)


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
    if "add_bos_token" in cfg:
      add_bos = bool(cfg["add_bos_token"])
    else:
      # No explicit flag: transformers adds whatever tokenizer.json's post-processor puts in front of the
      # text (e.g. Llama 3's <|begin_of_text|>). Keep that BOS; never append an EOS to a prompt.
      probe = tok.encode("a", add_special_tokens=True).ids
      plain = tok.encode("a", add_special_tokens=False).ids
      add_bos = len(probe) > len(plain) and probe[1:1 + len(plain)] == plain
      if add_bos:
        bos_id = probe[0]
    return cls(tok, eos_ids=sorted(set(eos_ids)), bos_id=bos_id, add_bos=add_bos, chat_template=template)

  def encode(self, text: str) -> list[int]:
    ids = self._tok.encode(text, add_special_tokens=False).ids
    if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_text(self, i: int) -> str | None:
    return self._tok.id_to_token(int(i))

  def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = True, tools=None,
                  documents=None, **template_kwargs) -> str:
    """Renders messages with the model's chat template in jinja2's immutable sandbox, as transformers'
    `apply_chat_template(..., tokenize=False)` does. A template that reaches for unsafe attributes raises
    jinja2.exceptions.SecurityError; one that calls raise_exception(msg) raises TemplateError."""
    if not self.chat_template:
      raise ValueError("this model has no chat template; pass chat=False")
    tpl = _compile_template(self.chat_template)
    bos = self.token_text(self.bos_id) if self.bos_id is not None else ""
    eos = self.token_text(self.eos_ids[0]) if self.eos_ids else ""
    kwargs = dict(bos_token=bos, eos_token=eos)
    kwargs.update(template_kwargs)
    return tpl.render(messages=messages, tools=tools, documents=documents,
                      add_generation_prompt=add_generation_prompt, **kwargs)
