"""Property-based fuzzing of the files people hand specjax: a prompts file (JSONL) and a Hugging Face
config.json. Arbitrary bytes and arbitrary JSON values give a parsed result that holds what the rest
of specjax relies on, or a clear error: a ValueError / FileNotFoundError of one line naming the file.
Any other exception (TypeError, KeyError, RecursionError, UnicodeError, MemoryError ...) fails.
"""
from __future__ import annotations

import json
import math
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import specjax.io as sio
from specjax.io import hf_loader
from specjax.io.prompts import read_prompts
from specjax.models.config import ModelConfig
from test_errors import hf_config, hf_tensors, write_hf_dir

# text with lone surrogates and control characters too (hypothesis leaves surrogates out by default)
TEXT = st.one_of(st.text(max_size=12), st.text(st.characters(categories=["Cs", "Cc", "Zs", "Ll"]), max_size=6))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), TEXT)
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4), max_leaves=10)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def workdir():
  with tempfile.TemporaryDirectory() as d:
    yield pathlib.Path(d)


def to_bytes(value, ascii_only: bool) -> bytes:
  """JSON text of `value`; with ascii_only=False a lone surrogate goes out as invalid UTF-8 bytes."""
  return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def assert_clear(err: Exception, where: pathlib.Path):
  assert isinstance(err, (ValueError, FileNotFoundError)), repr(err)
  msg = str(err)
  event("clear error")
  assert str(where) in msg and "\n" not in msg and "Traceback" not in msg, msg


# ---------------------------------------------------------------------------------------------- prompts files

def check_prompts(path: pathlib.Path):
  try:
    prompts = read_prompts(path)
  except Exception as e:  # noqa: BLE001 (the property: only clear errors)
    assert_clear(e, path)
    return None
  assert prompts
  assert len({str(p.id) for p in prompts}) == len(prompts)
  for p in prompts:
    assert isinstance(p.text, str) and p.text.strip()
    p.text.encode("utf-8")                               # valid Unicode: the tokenizer can take it
    assert isinstance(p.id, (str, int)) and not isinstance(p.id, bool)
    assert isinstance(p.category, str) and isinstance(p.group, str)
  event("parsed")
  return prompts


VALID = ('{"prompt": "Summarise this.", "id": "a", "category": "qa"}\n'
         '{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]}\n'
         '{"prompt": "Caf\u00e9 \u00fcber \U0001f916 \\ud83e\\udd16"}\n').encode()


@st.composite
def damaged(draw, data: bytes) -> bytes:
  """`data` cut short and/or with a few bytes replaced or inserted (a torn write, a bad editor)."""
  out = bytearray(data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)
  for _ in range(draw(st.integers(0, 3))):
    i = draw(st.integers(0, len(out)))
    out[i:i + draw(st.integers(0, 1))] = draw(st.binary(min_size=1, max_size=2))
  return bytes(out)


@FUZZ
@given(st.one_of(st.binary(max_size=300), damaged(VALID)))
def test_prompts_file_of_arbitrary_bytes(workdir, data):
  f = workdir / "bytes.jsonl"
  f.write_bytes(data)
  check_prompts(f)


ROWS = st.one_of(
    JSON,
    st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=12)},
                          optional={"id": st.integers(0, 50) | TEXT, "category": st.sampled_from(["qa", "writing"])}),
    st.fixed_dictionaries({"prompt": st.one_of(TEXT, JSON)}, optional={"id": JSON, "category": JSON}),
    st.fixed_dictionaries({"turns": st.one_of(st.lists(TEXT, max_size=3), JSON)},
                          optional={"question_id": JSON, "category": JSON}),
)


@FUZZ
@given(st.lists(st.tuples(ROWS, st.booleans()), max_size=6), st.sampled_from([b"\n", b"\r\n"]))
def test_prompts_file_of_arbitrary_json_rows(workdir, rows, newline):
  f = workdir / "rows.jsonl"
  f.write_bytes(b"".join(to_bytes(r, ascii_only) + newline for r, ascii_only in rows))
  prompts = check_prompts(f)
  if prompts is not None:                                # every row that parsed is there, in order
    assert len(prompts) == len(rows)


# ---------------------------------------------------------------------------------------------- config.json

KEYS = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "rms_norm_eps", "rope_theta",
        "tie_word_embeddings", "attention_bias", "rope_parameters", "rope_scaling"]
NEAR = st.one_of(st.integers(-2, 130), st.sampled_from([2 ** 31, 2 ** 63, 10 ** 12, 10 ** 400]), st.floats(-1, 1e13))
ROPE = st.fixed_dictionaries({}, optional={"rope_type": st.sampled_from(["default", "llama3", "yarn"]) | JSON,
                                           "rope_theta": NEAR | JSON, "factor": NEAR, "low_freq_factor": NEAR,
                                           "high_freq_factor": NEAR, "original_max_position_embeddings": NEAR})
CHANGES = st.dictionaries(st.sampled_from(KEYS), st.one_of(JSON, NEAR, ROPE), max_size=4)


def check_config(d: pathlib.Path) -> ModelConfig | None:
  try:
    c = hf_loader.read_config(d)
  except Exception as e:  # noqa: BLE001 (the property: only clear errors)
    assert_clear(e, d)
    return None
  ints = [c.vocab, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.ffn, c.max_context]
  assert all(type(v) is int and v >= 1 for v in ints), c
  assert c.heads % c.kv_heads == 0 and c.head_dim % 2 == 0
  assert math.isfinite(c.rope_theta) and c.rope_theta > 0 and math.isfinite(c.norm_eps) and c.norm_eps > 0
  assert isinstance(c.tie_embeddings, bool) and isinstance(c.qkv_bias, bool)
  event("parsed")
  return c


@FUZZ
@given(JSON)
def test_config_json_of_arbitrary_values(workdir, value):
  d = workdir / "any"
  d.mkdir(exist_ok=True)
  (d / "config.json").write_bytes(to_bytes(value, True))
  check_config(d)


@FUZZ
@given(st.binary(max_size=200))
def test_config_json_of_arbitrary_bytes(workdir, data):
  d = workdir / "bytes"
  d.mkdir(exist_ok=True)
  (d / "config.json").write_bytes(data)
  check_config(d)


@FUZZ
@given(CHANGES, st.sets(st.sampled_from(KEYS), max_size=2))
def test_config_json_with_fields_changed(workdir, changes, removed):
  d = workdir / "changed"
  d.mkdir(exist_ok=True)
  cfg = {k: v for k, v in {**hf_config(), **changes}.items() if k not in removed}
  (d / "config.json").write_bytes(to_bytes(cfg, True))
  check_config(d)


@pytest.fixture(scope="module")
def model_dir(workdir):
  return write_hf_dir(workdir / "model")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(CHANGES)
def test_loading_with_a_changed_config(model_dir, changes):
  """The whole load, weights included: a config that does not fit the weights is a clear error."""
  (model_dir / "config.json").write_bytes(to_bytes({**hf_config(), **changes}, True))
  try:
    t = sio.load(model_dir)
  except Exception as e:  # noqa: BLE001
    assert_clear(e, model_dir)
    return
  w = hf_tensors(hf_config())
  assert t.model.embed[...].shape == w["model.embed_tokens.weight"].shape
  event("loaded")
