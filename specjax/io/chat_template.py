"""Chat templates: Hugging Face's Jinja chat templates rendered in jinja2's immutable sandbox, with
string and format sizes bounded; apart from the tokenizer, which only calls `_compile_template`."""
from __future__ import annotations

import datetime
import functools
import json
import re

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from specjax.io import jsonfile

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


class ChatTemplateError(jinja2.exceptions.TemplateError, ValueError):
  """The chat template failed to compile or to render (a ValueError, so callers report it as bad input)."""


class ChatTemplateSecurityError(jinja2.exceptions.SecurityError, ChatTemplateError):
  """The chat template reached for something the sandbox forbids."""


# The most characters a chat template may produce, or build in any one value while rendering: a template
# is untrusted input, and `{{ 'a' * 10**12 }}` must be an error, not a MemoryError or a swapping machine.
MAX_TEMPLATE_CHARS = 1 << 22
_HUGE_WIDTH = re.compile(r"\d{7,}")       # a width or precision of a million or more in a format string


def _too_big(what: str):
  raise ChatTemplateError(f"the chat template builds {what} larger than the limit of {MAX_TEMPLATE_CHARS} "
                          "characters")


def _sized(v):
  if isinstance(v, (str, list, tuple, dict)) and len(v) > MAX_TEMPLATE_CHARS:
    _too_big(f"a {type(v).__name__}")
  return v


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _check_sizes(params=(), values=(), fmt=None):
  """Refuses, before Python allocates it, a result no chat needs: an integer size argument over the limit
  ('a'.ljust(10**12), center(10**12)), a list whose strings join to more than the limit, a huge width
  inside a format string ('%1000000000s')."""
  if any(_is_int(a) and abs(a) > MAX_TEMPLATE_CHARS for a in params):
    _too_big("a value")
  for v in (*params, *values):
    if isinstance(v, (list, tuple)) and sum(len(x) for x in v if isinstance(x, str)) > MAX_TEMPLATE_CHARS:
      _too_big("a joined string")
  if isinstance(fmt, str) and _HUGE_WIDTH.search(fmt):
    _too_big("a formatted string")


class _SizedCodeGenerator(CodeGenerator):
  """Checks the size of every `~` concatenation (unbounded doubling in a loop is otherwise easy)."""

  def visit_Concat(self, node, frame):
    self.write("environment.sized(")
    super().visit_Concat(node, frame)
    self.write(")")


class _ChatSandbox(ImmutableSandboxedEnvironment):
  """jinja2's immutable sandbox whose operators, calls and `~` may not build values over the size limit."""
  code_generator_class = _SizedCodeGenerator
  intercepted_binops = frozenset({"*", "+", "%", "**"})

  sized = staticmethod(_sized)

  def call_binop(self, context, operator, left, right):
    if operator == "*":
      for n, seq in ((left, right), (right, left)):
        if _is_int(n) and isinstance(seq, (str, list, tuple)) and len(seq) * n > MAX_TEMPLATE_CHARS:
          _too_big(f"a {type(seq).__name__}")
    elif operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0:
      if abs(left).bit_length() * right > 4 * MAX_TEMPLATE_CHARS:      # bits of the result
        _too_big("a number")
    elif operator == "%" and isinstance(left, str):
      _check_sizes(right if isinstance(right, tuple) else (right,), fmt=left)
    return _sized(super().call_binop(context, operator, left, right))

  def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's signature)
    if isinstance(getattr(__obj, "__self__", None), (str, list, tuple)):     # 'a'.ljust(n), ','.join(xs)
      _check_sizes((*args, *kwargs.values()))
    return _sized(super().call(__context, __obj, *args, **kwargs))

  def wrap_str_format(self, value):
    fmt = super().wrap_str_format(value)
    if fmt is None:
      return None

    def checked(*args, **kwargs):
      _check_sizes((*args, *kwargs.values()), fmt=value.__self__)
      return _sized(fmt(*args, **kwargs))
    return functools.update_wrapper(checked, fmt)


def _sized_filter(f):
  skip = 2 if hasattr(f, "jinja_pass_arg") else 1        # context or environment first, then the value

  @functools.wraps(f)
  def g(*args, **kwargs):
    _check_sizes((*args[skip:], *kwargs.values()), args[:skip],
                 args[skip - 1] if f.__name__ == "do_format" else None)
    return _sized(f(*args, **kwargs))
  return g


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
  env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters = {name: _sized_filter(f) for name, f in env.filters.items()}
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  env.globals["dict"] = _TemplateDict()
  env.globals["namespace"] = _TemplateNamespace
  return env.from_string(source)


def choose_chat_template(raw, name: str | None = None, where: str = "the model") -> tuple[str | None, dict]:
  """(the template to use, {name: template}) from a tokenizer's chat_template value: a string, or a list
  of {"name", "template"} (Hugging Face's named templates). Picks `name`, else "default" (None when the
  templates are all named otherwise)."""
  if raw is None or raw == "":
    named = {}
  elif isinstance(raw, str):
    named = {"default": raw}
  elif isinstance(raw, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                     and isinstance(t.get("template"), str) for t in raw):
    named = {t["name"]: t["template"] for t in raw}
  else:
    raise ValueError(f"{where}: chat_template must be a string or a list of {{\"name\": ..., \"template\": ...}} "
                     f"objects, got {jsonfile.show(raw)}")
  if name is not None and name not in named:
    raise ValueError(f"{where}: no chat template named {name!r}; "
                     f"{'available: ' + ', '.join(named) if named else 'the model has none'}")
  return named.get(name or "default"), named
