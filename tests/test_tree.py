"""Draft trees: static construction, greedy growth, in-program ancestor masks, and tree attention."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from specjax.cache import KVCache
from specjax.engine import tree as tree_lib
from specjax.models.llama import causal_mask
from specjax.testing import tiny_target


def test_from_choices_builds_parents_depths_and_masks():
  t = tree_lib.from_choices([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
  assert t.size == 7
  assert t.parent.tolist() == [-1, 0, 0, 1, 1, 2, 3]
  assert t.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
  assert t.mask[6].tolist() == [True, True, False, True, False, False, True]
  assert sorted(map(tuple, t.paths)) == [(0, 1, 3, 6), (0, 1, 4), (0, 2, 5)]
  assert tree_lib.chain(3).parent.tolist() == [-1, 0, 1, 2]


def test_from_choices_rejects_orphans():
  with pytest.raises(ValueError, match="no parent"):
    tree_lib.from_choices([(0, 1)])


def _expected_len(tree, acc):
  total = 0.0
  for c in tree.choices:
    total += np.prod([acc[d, r] for d, r in enumerate(c)])
  return total


def test_grow_is_optimal_on_a_small_case():
  acc = np.array([[0.6, 0.2, 0.1], [0.5, 0.2, 0.1], [0.4, 0.1, 0.05]])
  budget = 4
  best = tree_lib.grow(acc, budget)
  assert best.size == budget + 1
  # Brute force over all valid trees of `budget` nodes drawn from depth <= 3, rank < 3.
  universe = [c for d in range(1, 4) for c in itertools.product(range(3), repeat=d)]
  top = 0.0
  for combo in itertools.combinations(universe, budget):
    s = set(combo)
    if all(c[:-1] in s or len(c) == 1 for c in combo):
      top = max(top, _expected_len(tree_lib.from_choices(combo), acc))
  assert _expected_len(best, acc) == pytest.approx(top)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=12))
def test_ancestors_from_parents_matches_static_builder(seeds):
  parent = [-1] + [s % (t + 1) for t, s in enumerate(seeds)]
  mask, depth = tree_lib.ancestors_from_parents(jnp.asarray([parent]))
  ref = np.eye(len(parent), dtype=bool)
  for t in range(1, len(parent)):
    ref[t] |= ref[parent[t]]
  np.testing.assert_array_equal(np.asarray(mask[0]), ref)
  np.testing.assert_array_equal(np.asarray(depth[0]), ref.sum(1) - 1)


_TINY = tiny_target(seed=3, scale=3.0)
_PAD = 24


@jax.jit
def _tree_logits(tokens, positions, cache, mask):
  return _TINY.model(tokens, positions, cache, mask).logits


@jax.jit
def _seq_logits(seq):
  B, T = seq.shape
  return _TINY.model(seq, jnp.broadcast_to(jnp.arange(T), (B, T)), None, causal_mask(B, T)).logits


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_tree_attention_equals_sequential_paths(data):
  """Every node's logits in one tree forward equal running its root-to-node path after the prefix."""
  B, T, V = 3, data.draw(st.integers(1, 9)), _TINY.cfg.vocab
  lens = data.draw(st.lists(st.integers(1, 10), min_size=B, max_size=B))
  parent = np.full((B, T), -1)
  for b in range(B):
    for t in range(1, T):
      parent[b, t] = data.draw(st.integers(0, t - 1))
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
  prefix = rng.integers(0, V, (B, max(lens)))
  tokens = rng.integers(0, V, (B, T))
  mask, depth = tree_lib.ancestors_from_parents(jnp.asarray(parent))
  cfg = _TINY.cfg
  cache = KVCache.zeros(layers=cfg.layers, batch=B, max_len=32, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
  P = prefix.shape[1]
  pre = _TINY.model(jnp.asarray(prefix), jnp.broadcast_to(jnp.arange(P), (B, P)), None, causal_mask(B, P))
  cache = cache.write(pre.k, pre.v).advance(jnp.asarray(lens))
  got = np.asarray(_tree_logits(jnp.asarray(tokens), jnp.asarray(lens)[:, None] + depth, cache, mask))
  mask = np.asarray(mask)
  for b in range(B):
    seqs, ends = [], []
    for t in range(T):
      path = np.flatnonzero(mask[b, t])            # ancestors in topological (= depth) order
      s = list(prefix[b, :lens[b]]) + list(tokens[b, path])
      ends.append(len(s) - 1)
      seqs.append(s + [0] * (_PAD - len(s)))
    ref = np.asarray(_seq_logits(jnp.asarray(seqs)))
    for t in range(T):
      np.testing.assert_allclose(got[b, t], ref[t, ends[t]], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("batch_axis,axis,B", [(0, 1, 3), (1, 3, 3), (0, 2, 3), (0, 1, 70), (1, 2, 70)])
def test_put_rows_writes_each_row_at_its_own_offset(batch_axis, axis, B):
  """Unrolled (few rows) and looped (more than 64 rows) alike."""
  from specjax.cache import put_rows
  rng = np.random.default_rng(axis)
  shape = [2] * (max(batch_axis, axis) + 2)
  shape[batch_axis], shape[axis] = B, 9
  S, n = 9, 3
  buf = rng.normal(size=shape).astype(np.float32)
  xs = list(shape)
  xs[axis] = n
  x = rng.normal(size=xs).astype(np.float32)
  start = rng.integers(0, S - n + 1, B)
  got = np.asarray(jax.jit(lambda b, v, s: put_rows(b, v, s, batch_axis=batch_axis, axis=axis))(buf, x, start))
  want = buf.copy()
  for b in range(B):
    dst = [slice(None)] * buf.ndim
    src = [slice(None)] * buf.ndim
    dst[batch_axis] = src[batch_axis] = b
    dst[axis] = slice(start[b], start[b] + n)
    want[tuple(dst)] = x[tuple(src)]
  np.testing.assert_array_equal(got, want)
