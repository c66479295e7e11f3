"""Settings checked once, before the model loads: sampling, seed, drafter options, the context they need. The CLI
(generate and bench) says each in one line (`specjax: error: ...`, exit 2) and the API raises a ValueError with
the same message."""
from __future__ import annotations

import numpy as np
import pytest

import specjax
from specjax import cli, cli_args
from specjax.drafters import registry
from specjax.testing import tiny_target
from test_cli import api_error, cli_error, tiny_chat, use_tiny, write_jsonl_bytes  # noqa: F401 (fixtures)


# ------------------------------------------------------------------------------------------------------ sampling

@pytest.mark.parametrize("argv, message", [
    (["--temperature", "nan"], "temperature must be a finite number >= 0, got nan"),
    (["--temperature", "inf"], "temperature must be a finite number >= 0, got inf"),
    (["--temperature", "-1"], "temperature must be a finite number >= 0, got -1.0"),
    (["--temperature", "1e-10"], "temperature must be 0 (greedy) or at least 0.0001, got 1e-10"),
    (["--temperature", "0.7", "--top-p", "nan"], "top_p must be a number in (0, 1], got nan"),
    (["--temperature", "0.7", "--top-k", "0"], "top_k must be an integer >= 1, got 0"),
])
def test_sampling_settings_checked_before_loading(argv, message, capsys, use_tiny, tiny_chat):
  assert cli_error(capsys, "generate", *argv, "t1") == message
  assert use_tiny == []
  kw = {a.lstrip("-").replace("-", "_"): float(v) for a, v in zip(argv[::2], argv[1::2])}
  if "top_k" in kw:
    kw["top_k"] = int(kw["top_k"])
  assert api_error(ValueError, lambda: specjax.generate(tiny_chat, "t1", max_new_tokens=2, **kw)) == message


def test_bench_refuses_nan_temperature(tmp_path, capsys, use_tiny):
  f = write_jsonl_bytes(tmp_path / "p.jsonl", [b'{"prompt": "t1 t2"}'])
  msg = cli_error(capsys, "bench", "--prompts", str(f), "--temperature", "nan", "--out", str(tmp_path / "o"))
  assert msg == "temperature must be a finite number >= 0, got nan"
  assert use_tiny == [] and not (tmp_path / "o" / "records.jsonl").exists()


@pytest.mark.parametrize("seed", [2 ** 64, 2 ** 32, -1])
def test_seed_bounds(seed, capsys, use_tiny, tiny_chat):
  message = f"seed must be an integer in [0, 4294967295], got {seed}"
  assert cli_error(capsys, "generate", "--seed", str(seed), "t1") == message
  assert use_tiny == []
  assert api_error(ValueError, lambda: specjax.generate(tiny_chat, "t1", max_new_tokens=2, seed=seed)) == message
  assert specjax.generate(tiny_chat, "t1", max_new_tokens=2, seed=2 ** 32 - 1).new_tokens[0] >= 1


@pytest.mark.parametrize("kw, message", [
    (dict(top_k=2.5), "top_k must be an integer >= 1, got 2.5"),
    (dict(top_k=True), "top_k must be an integer >= 1, got True"),
    (dict(top_p="0.9"), "top_p must be a number in (0, 1], got '0.9'"),
    (dict(temperature="hot"), "temperature must be a finite number >= 0, got 'hot'"),
    (dict(temperature=10 ** 400), f"temperature must be a finite number >= 0, got {10 ** 400}"),
    (dict(max_new_tokens=True), "max_new_tokens must be a positive integer, got True"),
    (dict(chat="yes"), "chat and allow_special must be True or False, got 'yes', False"),
])
def test_api_bad_settings(kw, message, tiny_chat):
  kw = {"temperature": 0.7, "max_new_tokens": 2, **kw}
  assert api_error(ValueError, lambda: specjax.generate(tiny_chat, "t1", **kw)) == message


# ----------------------------------------------------------------------------------------------- drafter options

@pytest.mark.parametrize("drafter, option, message", [
    ("pld", "num_tokens=abc", "pld: option num_tokens must be an integer, got 'abc'"),
    ("pld", "num_tokens=null", "pld: option num_tokens must be an integer, got None"),
    ("pld", "num_tokens=1.5", "pld: option num_tokens must be an integer, got 1.5"),
    ("pld", "branches=true", "pld: option branches must be an integer, got True"),
    ("lookahead", "seed_from_prompt=abc", "lookahead: option seed_from_prompt must be true or false, got 'abc'"),
    ("lookahead", "seed_from_prompt=1", "lookahead: option seed_from_prompt must be true or false, got 1"),
    ("lookahead", "window=100000", "lookahead: need 1 + (ngram - 1) * (window + guesses) <= 4096 and pool_size <= "
                                   "1048576, got 200003 and 512"),
])
def test_drafter_option_types(drafter, option, message, tmp_path, capsys, use_tiny, tiny_chat):
  assert cli_error(capsys, "generate", "--drafter", drafter, "-O", option, "t1") == message
  f = write_jsonl_bytes(tmp_path / "p.jsonl", [b'{"prompt": "t1 t2"}'])
  assert cli_error(capsys, "bench", "--prompts", str(f), "--drafters", drafter, "-O", f"{drafter}.{option}",
                   "--out", str(tmp_path / "o")) == message
  assert use_tiny == []
  key, value = option.split("=")
  kw = {key: cli_args.option_value(value)}
  assert api_error(ValueError, lambda: specjax.generate(tiny_chat, "t1", max_new_tokens=2, drafter=drafter, **kw)) == message


def test_every_registered_drafter_type_checks_its_options():
  """So a new drafter cannot skip the checks: every int / bool option of every drafter refuses values of
  the wrong type, and accepts its default and numpy scalars."""
  import dataclasses
  import typing

  from specjax.protocol import check_option_types
  checked = 0
  for name in registry.names():
    cls = registry._classes()[name]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
      if not f.metadata.get("option", True):    # weights and the architecture come from a checkpoint
        continue
      kind = hints[f.name]
      bad = {int: [1.5, None, "8", True], bool: ["abc", 1, None, 0.0]}.get(kind)
      if bad is None:
        continue
      for v in bad:
        with pytest.raises(ValueError, match=rf"{name}: option {f.name} must be"):
          registry.make(name, **{f.name: v})
      # The default as a numpy scalar is accepted (checked on the class: trained drafters without a
      # shipped checkpoint, e.g. clover, cannot be made by name, but refuse bad types before reading files).
      check_option_types(cls(**{f.name: (np.int64 if kind is int else np.bool_)(f.default)}))
      checked += 1
  assert checked >= 10


# ------------------------------------------------------------------------------------------------------- context

def test_overflow_never_suggests_a_negative_length(capsys, monkeypatch):
  small = tiny_target(seed=0, max_context=32)
  monkeypatch.setattr(cli, "load_target", lambda model, dtype: small)
  msg = cli_error(capsys, "generate", "--no-chat", "--drafter", "pld", "-O", "num_tokens=40", "t1 t2 t3")
  assert msg.endswith("overflows the model's context of 32 tokens; no max_new_tokens fits: shorten the prompt or "
                      "use a shallower draft (e.g. fewer num_tokens)")
  assert "at most -" not in msg
  assert api_error(ValueError, lambda: specjax.generate(small, "t1 t2 t3", chat=False, drafter="pld", num_tokens=40)) == msg
