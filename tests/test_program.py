"""One program: the whole generation is one dispatch with no host round trip, compiled once."""
import jax
import numpy as np
import pytest
from flax import nnx

import specjax
from specjax import api
from specjax.engine import decode
from specjax.testing import tiny_target


@pytest.fixture(scope="module")
def t():
  return tiny_target(seed=2, scale=6.0)


@pytest.mark.parametrize("drafter", ["none", "pld", "lookahead"])
def test_generation_runs_with_transfers_disallowed(t, drafter):
  ids = [[3, 4, 5, 3, 4], [9, 8, 7]]
  spec, dparams, (prompt, lens) = api.prepare(t, ids, max_new_tokens=20, drafter=drafter)
  graphdef, params = nnx.split(t.model)
  key = jax.random.key(0)
  fn = api._executable(graphdef, spec, params, dparams, prompt, lens, key)
  args = jax.device_put((params, dparams, prompt, lens, key))
  jax.block_until_ready(args)
  with jax.transfer_guard("disallow"):
    res = fn(*args)
    jax.block_until_ready(res)
  ref = specjax.generate(t, ids, max_new_tokens=20, drafter=drafter)
  assert np.asarray(res.new_tokens).tolist() == ref.new_tokens


def test_second_call_with_same_shapes_does_not_recompile(t):
  specjax.generate(t, [[1, 2, 3]], max_new_tokens=12, drafter="pld")
  before = decode.TRACES
  g = specjax.generate(t, [[4, 5, 6, 7]], max_new_tokens=12, drafter="pld")   # same padded shapes
  assert decode.TRACES == before
  assert g.compile_s < 0.05
  specjax.generate(t, [[4, 5, 6, 7]], max_new_tokens=13, drafter="pld")      # new static setting
  assert decode.TRACES == before + 1


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
