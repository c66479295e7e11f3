"""Clover and Clover-2: lossless with random and trained weights, the tree grown level by level
equals the cell run along each node's own path, training lowers the loss and resumes exactly."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import specjax
from specjax.drafters import clover, clover_tree, registry
from specjax.drafters.clover import Clover1, Clover2
from specjax.process_cache import CACHE
from specjax.testing import tiny_target
from specjax.train import loop
from specjax.train.clover import CloverRecipe

PROMPTS = [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]


@pytest.fixture(scope="module")
def tiny():
  return tiny_target(seed=1, scale=8.0, eos_id=17)


@pytest.mark.parametrize("cls", [Clover1, Clover2])
@pytest.mark.parametrize("config", [dict(nodes=5, heads=3, aug_layers=2, draft_vocab=24),   # defaults: the contract test
                                    dict(nodes=12, threshold=0.5), dict(nodes=9, tree="static", draft_vocab=24)])
def test_random_weights_are_lossless_on_tiny_model(tiny, cls, config):
  d = cls.untrained(tiny, seed=4, **config)
  for batch, max_new in ((PROMPTS, 33), (PROMPTS[1:2], 9)):
    base = specjax.generate(tiny, batch, max_new_tokens=max_new)
    g = specjax.generate(tiny, batch, max_new_tokens=max_new, drafter=d)
    assert g.token_ids == base.token_ids


def test_new_weights_take_effect_without_recompiling(tiny):
  a = Clover2.untrained(tiny, seed=1)
  ga = specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=a)
  traces = CACHE.traces
  b = Clover2.untrained(tiny, seed=2, noise=0.5)
  gb = specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=b)
  assert CACHE.traces == traces and gb.token_ids == ga.token_ids
  assert ga.target_forwards != gb.target_forwards


def _sequential_states(heads, p, embed_w, u, root, tokens, parent, ctx_row):
  """The head state each node's children are drawn from, computed by running the cell along the
  node's own path, one node at a time."""
  first = heads.first(p, u[None], embed_w[root][None], ctx_row)[1][0]
  states = {0: first}
  out = np.zeros((len(tokens), u.shape[-1]), np.float32)
  for j in range(1, len(tokens)):
    if parent[j] < 0:
      continue
    out[j] = np.asarray(states[int(parent[j])])
    _, s = heads.step(p, states[int(parent[j])][None, None], embed_w[tokens[j]][None, None], ctx_row)
    states[j] = s[0, 0]
  return out


def _setup(seed, version, B=3, S=7):
  t = tiny_target(seed=2)
  cfg = t.cfg
  heads = clover.Heads(version, cfg)
  p = {k: jnp.asarray(v) for k, v in clover.initial(t, version=version, aug_layers=1, seed=seed, noise=0.3).items()}
  rng = np.random.default_rng(seed)
  u = jnp.asarray(rng.normal(size=(B, cfg.hidden)), jnp.float32)
  root = jnp.asarray(rng.integers(0, cfg.vocab, B), jnp.int32)
  kv = jnp.asarray(rng.normal(size=(2, B, cfg.kv_heads, S, cfg.head_dim)), jnp.float32)
  lengths = jnp.asarray(rng.integers(1, S + 1, B), jnp.int32)
  embed_w = jnp.asarray(t.model.embed[...], jnp.float32)
  logits_fn = lambda out: jax.nn.log_softmax(jnp.dot(out, embed_w.T, precision="highest"), -1)
  row_ctx = lambda b: (kv[0][b:b + 1], kv[1][b:b + 1], lengths[b:b + 1], lengths[b:b + 1] - 1)
  embed = lambda i: (i, embed_w[i])
  return heads, p, u, root, (kv[0], kv[1], lengths, lengths - 1), row_ctx, embed_w, logits_fn, embed


def _path_logp(heads, p, embed_w, logits_fn, u, root, ctx):
  """log p of the children of the node reached by a token path, the cell run along the path one node at a time."""
  def f(path):
    out, s = heads.first(p, u[None], embed_w[root][None], ctx)
    for tok in path:
      out, s = heads.step(p, s[:, None], embed_w[tok][None, None], ctx)
      out, s = out[:, 0], s[:, 0]
    return np.asarray(logits_fn(out)[0], np.float64)
  return f


def beam_genrate(logp_of, depth, nodes, top_p, quarter=False, top=clover_tree.TOP):
  """A port of Clover-2's `beam_genrate` selection (greedy; XiaoBin1992/clover, clover/model/clover2.py), plus
  Clover-1's quarter rule: the set of token paths in the tree. Not ported: at the last head the public code
  lacks the `k > 0` guard and drops a node's top child when its renormalised mass alone exceeds top_p."""
  frontier, tree, left = [((), 1.0)], [], nodes
  for _ in range(depth):
    level = []
    for path, joint in frontier:
      lp = logp_of(path)
      idx = np.argsort(-lp, kind="stable")[:top]
      pr = np.exp(lp[idx] - lp[idx].max())
      pr /= pr.sum()                                                 # softmax over the top logits
      mass = 0.0
      for k in range(top):
        mass += pr[k]
        if k > 0 and (mass > top_p or (quarter and pr[k] < pr[0] / 4)):
          break
        level.append((path + (int(idx[k]),), joint * pr[k]))
    if len(level) >= left:                                            # the level that fills the budget ends it
      tree += sorted(level, key=lambda x: -x[1])[:left]
      break
    tree, left, frontier = tree + level, left - len(level), level
  return {path for path, _ in tree}


def _paths(tok, parent):
  out = {0: ()}
  for j in range(1, len(tok)):
    if parent[j] >= 0:
      out[j] = out[int(parent[j])] + (int(tok[j]),)
  return set(list(out.values())[1:]), out


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), version=st.sampled_from([1, 2]), depth=st.integers(1, 4),
       nodes=st.integers(1, 14), top_p=st.sampled_from([0.3, 0.8, 0.95]))
def test_dynamic_tree_is_beam_genrate_and_its_states_the_sequential_cell(seed, version, depth, nodes, top_p):
  heads, p, u, root, ctx, row_ctx, embed_w, logits_fn, embed = _setup(seed, version)
  tok, parent, states = clover_tree.grow(heads, p, logits_fn, embed, u, root, ctx, depth=depth, nodes=nodes,
                                         top_p=top_p, quarter=version == 1)
  tok, parent, states = map(np.asarray, (tok, parent, states))
  assert tok.shape[1] == 1 + min(nodes, sum(clover_tree.level_widths(depth, nodes)))
  for b in range(u.shape[0]):
    assert all(parent[b, j] < j for j in range(1, tok.shape[1]))          # topological
    got, _ = _paths(tok[b], parent[b])
    logp_of = _path_logp(heads, p, embed_w, logits_fn, u[b], root[b], row_ctx(b))
    assert got == beam_genrate(logp_of, depth, nodes, top_p, quarter=version == 1)
    want = _sequential_states(heads, p, embed_w, u[b], root[b], tok[b], parent[b], row_ctx(b))
    live = parent[b] >= 0
    np.testing.assert_allclose(states[b][live], want[live], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("version,depth,nodes", [(2, 4, 25), (2, 3, 7), (1, 2, 30)])
def test_static_tree_takes_the_ranked_child_of_each_parent(version, depth, nodes):
  heads, p, u, root, ctx, row_ctx, embed_w, logits_fn, embed = _setup(3, version)
  shape = clover_tree.static_tree(depth, nodes)
  assert shape.max_depth <= depth
  assert shape.size == 1 + min(nodes, sum(len(c) <= depth for c in clover_tree.EVAL_TREE))
  tok = np.asarray(clover_tree.grow_static(heads, p, logits_fn, embed, u, root, ctx, shape))
  for b in range(u.shape[0]):
    logp_of = _path_logp(heads, p, embed_w, logits_fn, u[b], root[b], row_ctx(b))
    path = {(): ()}
    for i, c in enumerate(shape.choices, 1):                             # node order: by depth, then ranks
      path[c] = path[c[:-1]] + (int(np.argsort(-logp_of(path[c[:-1]]), kind="stable")[c[-1]]),)
      assert tok[b, i] == path[c][-1]


# ------------------------------------------------------------------ training

CFG = dict(steps=30, batch=4, lr=1e-2, warmup=3, eval_every=15, save_every=10, heads=3, draft_vocab=32, nodes=6,
           eval_positions=256)


@pytest.mark.parametrize("name", ["clover", "clover2"])
def test_training_lowers_the_loss_and_the_drafter_is_lossless(tiny_full, tmp_path, name):
  t, train, held = tiny_full
  c = loop.TrainConfig(drafter=name, **CFG).resolved()
  recipe = CloverRecipe(t, train, held, c)
  batch = recipe.batch(np.arange(8), 0)
  before = float(recipe.loss(recipe.init(), recipe.consts, batch)[0])
  d, summary = loop.fit(t, train, held, c, tmp_path / "run", progress=False, log=lambda m: None)
  after = float(recipe.loss(d.params["p"].get_value(), recipe.consts, batch)[0])
  assert after < 0.8 * before
  assert summary["tau"] > 1.2 and summary["top1"][0] > 0.2     # chance: 1/32
  base = specjax.generate(t, PROMPTS, max_new_tokens=30)
  g = specjax.generate(t, PROMPTS, max_new_tokens=30, drafter=d)
  assert g.token_ids == base.token_ids


def test_resume_after_a_crash_ends_with_the_same_weights(tiny_full, tmp_path):
  t, train, held = tiny_full
  c = loop.TrainConfig(drafter="clover2", **dict(CFG, steps=20, eval_every=20))
  whole, _ = loop.fit(t, train, held, c, tmp_path / "a", progress=False, log=lambda m: None)
  loop.fit(t, train, held, c, tmp_path / "b", stop_after=10, progress=False, log=lambda m: None)
  resumed, _ = loop.fit(t, train, held, c, tmp_path / "b", progress=False, log=lambda m: None)
  a, b = whole.params["p"].get_value(), resumed.params["p"].get_value()
  assert set(a) == set(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


# ------------------------------------------------------------------ checkpoints

def _write(t, d, path):
  from specjax.io import checkpoint
  return checkpoint.save_drafter(path, d, t)


@pytest.mark.parametrize("name,cls", [("clover", Clover1), ("clover2", Clover2)])
def test_checkpoint_keeps_the_version_and_heads(tmp_path, name, cls):
  """(The round trip itself, weights and the refusal of another target: tests/test_drafter_contract.py.)"""
  t = tiny_target(seed=1, scale=8.0)
  d = cls.untrained(t, seed=2, draft_vocab=16, nodes=5, heads=3)
  path = _write(t, d, tmp_path / f"{name}.safetensors")
  loaded = registry.make(f"{name}:{path}")
  assert loaded.name == name and loaded.version == d.version and loaded.heads == 3
  assert loaded.nodes == cls().nodes                   # the budget belongs to the machine that decodes
  with pytest.raises(ValueError, match="holds a"):
    registry.make(f"{'clover2' if name == 'clover' else 'clover'}:{path}")
  with pytest.raises(ValueError, match="no option"):
    registry.make(f"{name}:{path}", version=1)
  with pytest.raises(ValueError, match="nodes must be a positive integer"):
    registry.make(f"{name}:{path}", nodes=0)


# ------------------------------------------------------------------ the shipped checkpoints, on the default model

REAL_PROMPTS = [
    "Summarize: Alice went to the market. Alice bought apples. Alice went home and made an apple pie.",
    "Write a Python function that returns the square of a number, and explain it.",
    "What is 12 times 12? Think step by step, then give the answer in one sentence. " * 4,   # > 64 tokens
    "Name three colours.",
]


def test_shipped_checkpoint_is_lossless_on_default_model(default_target):
  d = registry.make("clover2")
  assert d.trained_for
  for n, opts in ((1, {}), (4, {}), (4, dict(nodes=16)), (4, dict(tree="static", nodes=25))):
    base = specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=48)
    g = specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=48, drafter="clover2", **opts)
    assert g.token_ids == base.token_ids
  assert len(specjax.api.encode_prompts(default_target, REAL_PROMPTS[2:3], True)[0]) > 64
  assert sum(g.new_tokens) / sum(g.target_forwards) > 1.3      # trained heads do accept tokens


def test_clover1_is_lossless_on_default_model(default_target):
  """No Clover-1 checkpoint is shipped (the checkpoint budget went to EAGLE-3): starting weights
  with noise stand in; any weights must leave the output unchanged."""
  d = Clover1.untrained(default_target, seed=1, noise=0.02)
  for n in (1, 4):
    base = specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=32)
    assert specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=32, drafter=d).token_ids == base.token_ids
