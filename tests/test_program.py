"""One program: the whole generation is one dispatch with no host round trip, compiled once."""
import jax
import numpy as np
import pytest

import specjax
import specjax.batch
from specjax.engine import decode
from specjax.process_cache import CACHE
from specjax.program import Program, Settings
from specjax.program.core import compilation_cache
from specjax.testing import tiny_target


@pytest.fixture(scope="module")
def t():
  return tiny_target(seed=2, scale=6.0)


@pytest.mark.parametrize("drafter", ["none", "pld", "lookahead"])
def test_generation_runs_with_transfers_disallowed(t, drafter):
  ids = [[3, 4, 5, 3, 4], [9, 8, 7]]
  program = Program(t)
  fn, args = program.executable(program.prepare(ids, Settings.make(max_new_tokens=20, drafter=drafter)),
                                jax.random.key(0))
  args = jax.device_put(args)
  jax.block_until_ready(args)
  with jax.transfer_guard("disallow"):
    res = fn(*args)
    jax.block_until_ready(res)
  ref = specjax.generate(t, ids, max_new_tokens=20, drafter=drafter)
  assert np.asarray(res.new_tokens).tolist() == ref.new_tokens


def test_second_call_with_same_shapes_does_not_recompile(t):
  specjax.generate(t, [[1, 2, 3]], max_new_tokens=12, drafter="pld")
  before = CACHE.traces
  g = specjax.generate(t, [[4, 5, 6, 7]], max_new_tokens=12, drafter="pld")   # same padded shapes
  assert CACHE.traces == before
  assert g.compile_s < 0.05
  g13 = specjax.generate(t, [[4, 5, 6, 7]], max_new_tokens=13, drafter="pld")   # the budget is traced
  assert CACHE.traces == before and g13.new_tokens == [13]
  specjax.generate(t, [[4, 5, 6, 7]], max_new_tokens=100, drafter="pld")   # a longer buffer: new program
  assert CACHE.traces == before + 1


def test_bad_inputs_fail_fast_with_clear_errors(t):
  with pytest.raises(ValueError, match="unknown drafter 'medusa-x'"):
    specjax.generate(t, [[1, 2]], drafter="medusa-x")
  with pytest.raises(ValueError, match="no option"):
    specjax.generate(t, [[1, 2]], drafter="pld", windows=3)
  with pytest.raises(ValueError, match="num_tokens"):
    specjax.generate(t, [[1, 2]], drafter="pld", num_tokens=0)
  with pytest.raises(ValueError, match="ngram >= 2"):
    specjax.generate(t, [[1, 2]], drafter="lookahead", ngram=1)
  with pytest.raises(ValueError, match="unknown acceptance"):
    specjax.generate(t, [[1, 2]], acceptance="always")
  with pytest.raises(ValueError, match="temperature"):
    specjax.generate(t, [[1, 2]], temperature=-1.0)
  # A tree deeper than the room left in the context.
  with pytest.raises(ValueError, match="draft depth"):
    specjax.generate(t, [[1, 2]], max_new_tokens=t.cfg.max_context - 10, drafter="pld", num_tokens=12)


def test_nan_logits_raise_a_clear_error():
  bad = tiny_target(seed=2, scale=6.0)
  bad.model.final_norm[...] = bad.model.final_norm[...].at[0].set(float("nan"))
  with pytest.raises(FloatingPointError, match="NaN logits"):
    specjax.generate(bad, [[1, 2, 3]], max_new_tokens=4)
  with pytest.raises(FloatingPointError, match="NaN logits"):
    specjax.generate(bad, [[1, 2, 3]], max_new_tokens=4, drafter="pld")


def test_declared_capture_reaches_drafters_through_both_verify_branches(t):
  """The layers a drafter declares come back from the full tree forward and from the one-token
  branch taken when no row has a candidate (padded to the tree's size), with the same root values."""
  import dataclasses

  import jax.numpy as jnp

  from specjax.cache import KVCache
  from specjax.engine import tree as tree_lib
  from specjax.models.llama import causal_mask, forward

  cfg = t.cfg
  prefix = jnp.asarray([[3, 4, 5, 6], [9, 8, 7, 6]], jnp.int32)
  cache = KVCache.zeros(layers=cfg.layers, batch=2, max_len=16, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
  _, cache = forward(t.model, prefix, jnp.broadcast_to(jnp.arange(4), (2, 4)), cache, causal_mask(2, 4))
  tree = tree_lib.chain(2).draft(jnp.asarray([[6, 1, 2], [6, 3, 4]], jnp.int32))
  empty = dataclasses.replace(tree, parent=jnp.full_like(tree.parent, -1))
  positions = 4 + tree.depth
  full = decode._verify(t.model, tree, positions, cache, True, (0, 1))
  root = decode._verify(t.model, empty, positions, cache, True, (0, 1))
  for layer in (0, 1):
    assert full.layer_hidden[layer].shape == root.layer_hidden[layer].shape == (2, 3, cfg.hidden)
    np.testing.assert_allclose(root.layer_hidden[layer][:, 0], full.layer_hidden[layer][:, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(full.layer_hidden[1], full.hidden, rtol=1e-6)        # the last layer is the residual
  np.testing.assert_allclose(root.logits[:, 0], full.logits[:, 0], rtol=1e-4, atol=1e-4)


def test_prefill_time_is_reported_apart_from_decoding(t):
  """The program's host callback marks the prefill's end: prefill_s lies inside the call's wall time,
  decoding alone is faster than the whole call, and a one-token prompt (no prefill forward) still marks it."""
  for prompt in (list(range(1, 40)), [5]):
    g = specjax.generate(t, [prompt, prompt[:3]], max_new_tokens=16, time_prefill=True)
    assert 0 < g.prefill_s < g.wall_s
    assert g.decode_tokens_per_s == pytest.approx(sum(g.new_tokens) / (g.wall_s - g.prefill_s))
    assert g.decode_tokens_per_s > g.tokens_per_s
  plain = specjax.generate(t, [prompt], max_new_tokens=16)    # not asked: no callback, nothing reported
  assert plain.prefill_s is None and plain.decode_tokens_per_s is None


def test_persistent_compilation_cache_is_configured_unless_turned_off(monkeypatch, tmp_path):
  import jax
  monkeypatch.setattr(CACHE, "compilation_cache_set", False)
  monkeypatch.setenv("SPECJAX_COMPILATION_CACHE", "0")
  compilation_cache()
  assert not jax.config.jax_compilation_cache_dir
  monkeypatch.setattr(CACHE, "compilation_cache_set", False)
  monkeypatch.setenv("SPECJAX_COMPILATION_CACHE", str(tmp_path / "xla"))
  try:
    compilation_cache()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  finally:
    jax.config.update("jax_compilation_cache_dir", None)


def test_program_layer_generates_what_the_facade_does(t):
  """The façade is Settings.make + encode_prompts + Program.generate: the same tokens, one drafter built."""
  settings = Settings.make(drafter="pld", max_new_tokens=10, drafter_options={"num_tokens": 3})
  g = Program(t).generate([[3, 4, 5, 3, 4], [9, 8, 7]], settings)
  ref = specjax.generate(t, [[3, 4, 5, 3, 4], [9, 8, 7]], max_new_tokens=10, drafter="pld", num_tokens=3)
  assert g.token_ids == ref.token_ids and g.budget == ref.budget == "num_tokens=3"
  with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, got 0"):
    Settings.make(max_new_tokens=0)
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    specjax.batch.run_batch(__file__, "/nonexistent/out.jsonl", target=t, batch_size=0)


def test_process_state_lives_in_the_one_cache_object(t):
  """Compiled programs, trace counts and observed acceptance are kept in specjax.process_cache.CACHE."""
  from specjax import budget
  specjax.generate(t, [[1, 2, 3]], max_new_tokens=5)
  assert CACHE.executables and CACHE.traces
  assert not hasattr(decode, "TRACES") and not hasattr(decode, "PREFILL_DONE")     # no second home
  key = ("fingerprint", "a drafter")
  budget.observe(key, 2, 2.0, new_tokens=[4, 4], forwards=[2, 2])
  assert CACHE.seen[(key, 2)] == [1.0, 1.0]


def test_entry_points_generate_through_the_program_layer():
  """batch, bench and training data never call the public façade, and nothing below the program imports it."""
  import ast
  import pathlib
  root = pathlib.Path(specjax.__file__).parent
  for path in [root / "batch.py", *root.glob("bench/*.py"), *root.glob("train/*.py"), *root.glob("program/*.py"),
               *root.glob("parallel/*.py"), *root.glob("engine/*.py")]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name if isinstance(n, ast.Import) else f"{n.module}.{a.name}"
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not {"specjax.api", "specjax.cli"} & names, path
    if path.parent.name in ("parallel", "engine"):
      assert not any(n.startswith("specjax.program") for n in names), path
