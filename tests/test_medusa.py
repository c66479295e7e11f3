"""Medusa: lossless with random and with trained heads, weights passed as program arguments."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import specjax
from specjax.drafters import registry
from specjax.drafters.medusa import Medusa
from specjax.process_cache import CACHE
from specjax.testing import tiny_target

PROMPTS = [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]


@pytest.fixture(scope="module")
def tiny():
  return tiny_target(seed=1, scale=8.0, eos_id=17)


@pytest.mark.parametrize("config", [dict(nodes=12, draft_vocab=24, layers=2), dict(nodes=3, heads=2)])   # defaults: the contract test
def test_random_heads_are_lossless_on_tiny_model(tiny, config):
  d = Medusa.untrained(tiny, seed=4, **config)
  for batch, max_new in ((PROMPTS, 33), (PROMPTS[1:2], 9)):
    base = specjax.generate(tiny, batch, max_new_tokens=max_new)
    g = specjax.generate(tiny, batch, max_new_tokens=max_new, drafter=d)
    assert g.token_ids == base.token_ids


def test_new_weights_take_effect_without_recompiling(tiny):
  a = Medusa.untrained(tiny, seed=1, nodes=6)
  specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=a)
  traces = CACHE.traces
  ga = specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=a)
  b = Medusa.untrained(tiny, seed=2, nodes=6)             # same configuration, other values
  gb = specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=b)
  assert CACHE.traces == traces                           # no recompile for new values
  assert ga.target_forwards != gb.target_forwards          # ... and the new values were used
  # Heads that copy the target's own next token guess the repeated token of a constant run.
  zero = dataclasses.replace(a, params=jax_zeros_like(a.params))
  gz = specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=zero)
  assert CACHE.traces == traces and gz.token_ids == ga.token_ids


def jax_zeros_like(state):
  import jax
  return jax.tree.map(lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)


def test_options_and_errors(tiny):
  with pytest.raises(ValueError, match="no weights"):
    specjax.generate(tiny, [[1, 2]], drafter=Medusa(hidden=tiny.cfg.hidden))
  with pytest.raises(ValueError, match="hidden size"):
    specjax.generate(tiny, [[1, 2]], drafter=Medusa.untrained(tiny_target(seed=0, hidden=48, heads=6, kv_heads=2)))
  with pytest.raises(ValueError, match="nodes must be a positive integer"):
    specjax.generate(tiny, [[1, 2]], drafter=Medusa.untrained(tiny), nodes=0)
  with pytest.raises(ValueError, match="no option"):
    registry.make("medusa", heads=3)          # the architecture comes from the checkpoint


REAL_PROMPTS = [
    "Summarize: Alice went to the market. Alice bought apples. Alice went home and made an apple pie.",
    "Write a Python function that returns the square of a number, and explain it.",
    "What is 12 times 12? Think step by step, then give the answer in one sentence. " * 4,   # > 64 tokens
    "Name three colours.",
]


def test_shipped_checkpoint_is_lossless_on_default_model(default_target):
  d = registry.make("medusa")
  assert d.trained_for
  for n, nodes in ((1, None), (4, None), (4, 16)):
    opts = {} if nodes is None else {"nodes": nodes}
    base = specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=48)
    g = specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=48, drafter="medusa", **opts)
    assert g.token_ids == base.token_ids
  assert len(specjax.api.encode_prompts(default_target, REAL_PROMPTS[2:3], True)[0]) > 64
  assert sum(g.new_tokens) / sum(g.target_forwards) > 1.3      # trained heads do accept tokens
