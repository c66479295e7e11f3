"""Chat templates as models ship them: named templates (`--chat-template NAME`), templates of the wrong type, and
templates that fail, loop or grow without bound: each is one clear line from the CLI and the same message from
the API."""
from __future__ import annotations

import json
import pathlib

import pytest

import specjax
from specjax import cli
from specjax.testing import tiny_target
from test_cli import api_error, cli_error, run_main
from test_errors import write_hf_dir


def _hf_dir_with_templates(tmp_path, template) -> pathlib.Path:
  d = write_hf_dir(tmp_path / "m")
  (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
  return d


NAMED = [{"name": "default", "template": "D:{{ messages[0]['content'] }}"},
         {"name": "tool_use", "template": "T:{{ messages[0]['content'] }}"}]


def test_named_chat_templates(tmp_path, capsys):
  d = _hf_dir_with_templates(tmp_path, NAMED)
  t = specjax.load(d)
  assert t.tokenizer.render_chat([{"role": "user", "content": "w3"}]) == "D:w3"
  assert set(t.tokenizer.chat_templates) == {"default", "tool_use"}
  t = specjax.load(d, chat_template="tool_use")
  assert t.tokenizer.render_chat([{"role": "user", "content": "w3"}]) == "T:w3"
  code, out, err = run_main(capsys, "generate", "--model", str(d), "--chat-template", "tool_use", "--json",
                            "--max-new-tokens", "2", "w3 w4")
  assert code == 0, err
  assert len(out.splitlines()) == 1
  msg = cli_error(capsys, "generate", "--model", str(d), "--chat-template", "rag", "w3")
  assert msg == f"{d / 'tokenizer_config.json'}: no chat template named 'rag'; available: default, tool_use"
  assert api_error(ValueError, lambda: specjax.load(d, chat_template="rag")) == msg


def test_named_chat_templates_without_default(tmp_path, capsys):
  d = _hf_dir_with_templates(tmp_path, NAMED[1:])
  msg = cli_error(capsys, "generate", "--model", str(d), "w3")
  assert msg == ("the model's chat templates are all named (tool_use), none 'default'; choose one with "
                 "--chat-template NAME, or pass --no-chat")
  with pytest.raises(ValueError, match=r"all named \(tool_use\).*chat_template=NAME"):
    specjax.generate(specjax.load(d), "w3", max_new_tokens=2)


@pytest.mark.parametrize("template", [42, {"x": 1}, [{"name": "default"}], ["a"]])
def test_chat_template_of_the_wrong_type(tmp_path, capsys, template):
  d = _hf_dir_with_templates(tmp_path, template)
  msg = cli_error(capsys, "generate", "--model", str(d), "w3")
  assert msg.startswith(f"{d / 'tokenizer_config.json'}: chat_template must be a string or a list of "
                        '{"name": ..., "template": ...} objects, got ')
  assert api_error(ValueError, lambda: specjax.load(d)) == msg


@pytest.mark.parametrize("template, message", [
    ("{% for m in messages %}{{ m.content }", "the chat template does not compile (line 1: unexpected '}')"),
    ("{{ raise_exception('only system turns') }}", "the chat template raised an error: only system turns"),
    ("{{ messages + 1 }}", 'the chat template failed: TypeError: can only concatenate list (not "int") to list'),
    ("{{ 'a' * 10**12 }}", "the chat template builds a str larger than the limit of 4194304 characters"),
    ("{{ 'a'.ljust(10**12) }}", "the chat template builds a value larger than the limit of 4194304 characters"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "the chat template builds a str larger than the limit of 4194304 characters"),
    ("{% for i in range(100000) %}{% for j in range(100) %}xxxx{% endfor %}{% endfor %}",
     "the chat template builds an output larger than the limit of 4194304 characters"),
    ("{{ '%1000000000000s' % 'a' }}", "the chat template builds a formatted string larger than the limit of 4194304 characters"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "the chat template failed: RecursionError: maximum recursion depth exceeded"),
])
def test_failing_chat_template_says_so(template, message, capsys, monkeypatch):
  t = tiny_target(seed=0)
  t.tokenizer.chat_template = template
  monkeypatch.setattr(cli, "load_target", lambda model, dtype: t)
  assert cli_error(capsys, "generate", "t1") == message
  assert api_error(ValueError, lambda: specjax.generate(t, "t1", max_new_tokens=2)) == message
