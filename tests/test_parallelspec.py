"""ParallelSpec: the masks a decoding step appends see exactly what group-wise training shows them, one draft-layer
call a step, and training lowers the loss into a lossless drafter. (Greedy equality at batch 1 and 4, the
checkpoint round trip and wrong-target refusal: test_drafter_contract.py; sampling: test_sampling.py.)"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import specjax
from specjax.drafters import parallelspec
from specjax.drafters.parallelspec import ParallelSpec
from specjax.process_cache import CACHE
from specjax.testing import tiny_target
from specjax.train import loop
from specjax.train.parallelspec import ParallelSpecRecipe

PROMPTS = [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]


def test_decode_masks_are_the_training_groups():
  """A group of masks after anchor t in training (one call over the whole sequence and many groups) equals the
  masks a decoding step appends after committed entry t: with entries 0..c-1 in the draft cache, entries c..t+2
  fresh (t+1, t+2 a rejected draft the masks must not see), for several splits. A mask that saw a later entry, a
  wrong position or another group would differ."""
  t = tiny_target(seed=2, scale=6.0)
  cfg = t.cfg
  p = {k: jnp.asarray(v) for k, v in parallelspec.initial(t, 4, seed=3, noise=0.3).items()}
  rng = np.random.default_rng(0)
  L = 14
  f = jnp.asarray(rng.normal(size=(1, L, cfg.hidden)), jnp.float32)
  nxt = jnp.asarray(rng.integers(0, cfg.vocab, (1, L)), jnp.int32)
  embed = jnp.asarray(t.model.embed[...], jnp.float32)
  sel = jnp.asarray([[2, 5, 9, 10]], jnp.int32)
  g, gm = jax.jit(functools.partial(parallelspec.groups, cfg))(p, embed, f, nxt, sel)
  with_masks = jax.jit(functools.partial(parallelspec.with_masks, cfg))     # eager ops cost tens of seconds here
  for i, (c, anchor) in enumerate([(0, 2), (3, 5), (9, 9), (4, 10)]):
    e_all = embed[nxt]
    _, _, kc, vc = with_masks(p, e_all[:, :max(c, 1)], f[:, :max(c, 1)],
                                           jnp.arange(max(c, 1))[None], jnp.asarray([max(c, 1)]))
    T = anchor + 3 - c                      # fresh entries c..anchor+2
    fresh = slice(c, anchor + 3)
    kv = (jnp.swapaxes(kc, 1, 2), jnp.swapaxes(vc, 1, 2))
    S = kv[0].shape[2]
    live = jnp.arange(S)[None] < c
    g2, gm2, _, _ = with_masks(p, e_all[:, fresh], f[:, fresh], jnp.arange(c, anchor + 3)[None],
                                            jnp.asarray([anchor + 1 - c]), kv, live)
    np.testing.assert_allclose(np.asarray(gm2[0]), np.asarray(gm[0, i]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(g2[0, anchor - c]), np.asarray(g[0, anchor]), atol=2e-5)
    assert T == g2.shape[1]
  # Without the per-row count the masks would see the rejected entries, and differ.
  _, bad, _, _ = with_masks(p, embed[nxt][:, :13], f[:, :13], jnp.arange(13)[None], jnp.asarray([13]))
  assert np.abs(np.asarray(bad[0]) - np.asarray(gm[0, 3])).max() > 1e-3


def test_one_draft_layer_call_a_step(monkeypatch):
  """The decode program calls the draft layer once in init and once a step (update); propose calls it never."""
  t = tiny_target(seed=1, scale=8.0)
  d = ParallelSpec.untrained(t, seed=4, nodes=5)
  calls = []
  real = parallelspec.layer
  monkeypatch.setattr(parallelspec, "layer", lambda *a, **k: calls.append(1) or real(*a, **k))
  CACHE.executables.clear()
  try:
    g = specjax.generate(t, PROMPTS[:2], max_new_tokens=12, drafter=d)
  finally:
    CACHE.executables.clear()
  assert len(calls) == 2 and max(g.target_forwards) > 2      # traced once for init, once for the loop's step


CFG = dict(drafter="parallelspec", steps=16, batch=4, lr=1e-2, warmup=3, eval_every=20, save_every=20, heads=3,
           draft_vocab=32, nodes=6, eval_positions=128)


def _floor(t, recipe, batch, k, decay=0.8, token_weight=0.1, three=False):
  """The loss's floor: SmoothL1 reaches 0 at a perfect draft, the soft cross-entropy against the target's
  probabilities p over the draft vocabulary (mass m, not renormalised) only -sum p log(p / m). Entry t of
  depth d wants feature t+d (zeros past the end, as the loss pads). three (EAGLE-3's host): cross-entropy
  alone (token_weight 1), p renormalised, scored where the target's top-1 lies in the draft vocabulary."""
  from specjax.models.llama import rms_norm
  from specjax.train.recipe import soft_targets
  f = rms_norm(batch["h"], recipe.consts["norm_w"], t.cfg.norm_eps)
  f = jnp.pad(f, ((0, 0), (0, k + 1), (0, 0)))
  p = np.asarray(soft_targets(recipe.consts, f, renormalise=three), np.float64)       # [B, L+k+1, N]
  ent = -(p * np.log(np.maximum(p / p.sum(-1, keepdims=True), 1e-30))).sum(-1)
  valid, sel, ok = (np.asarray(batch[n]) for n in ("valid", "sel", "sel_ok"))
  if three:
    valid, token_weight = valid & (np.asarray(batch["top_idx"])[..., 0] >= 0), 1.0
  valid = np.pad(valid, ((0, 0), (0, k + 1)))
  L = batch["valid"].shape[1]
  floor = ent[:, 1:L + 1][valid[:, :L]].mean()               # the real entries: entry t wants f_{t+1}
  for j in range(1, k):                                      # mask j at anchor t: f_{t+1+j}, valid at t+j
    v = ok & np.take_along_axis(valid, sel + j, 1)
    floor += decay ** j * (np.take_along_axis(ent, sel + j + 1, 1)[v].mean() if v.any() else 0.0)
  return token_weight * float(floor)


def test_training_lowers_the_loss_and_the_drafter_is_lossless(tiny_full, tmp_path):
  """On EAGLE-1's host (--no-own-head): SmoothL1 + 0.1 CE, noised features, the target's frozen head."""
  t, train, held = tiny_full
  c = loop.TrainConfig(**dict(CFG, own_head=False)).resolved()
  recipe = ParallelSpecRecipe(t, train, held, c)
  batch = recipe.batch(np.arange(8), 0)
  assert batch["sel_ok"].any() and int(batch["sel"].max()) < batch["nxt"].shape[1] - 1
  before, acc0 = recipe.loss(recipe.init(), recipe.consts, batch)
  d, summary = loop.fit(t, train, held, c, tmp_path / "run", progress=False, log=lambda m: None)
  after, acc1 = recipe.loss(d.params["p"].get_value(), recipe.consts, batch)
  floor = _floor(t, recipe, batch, c.heads)
  assert float(after) - floor < 0.8 * (float(before) - floor)       # 16 steps: 0.72 measured
  assert acc1.shape == (3,) and float(acc1[1:].mean()) > float(acc0[1:].mean())   # the masks learned too
  assert d.depth == 3 and len(d.accuracy) == 3 and summary["tau"] > 1.2 and d.fuse == () and "fuse/w" not in d.params["p"].get_value()
  base = specjax.generate(t, PROMPTS, max_new_tokens=30)
  g = specjax.generate(t, PROMPTS, max_new_tokens=30, drafter=d)
  assert g.token_ids == base.token_ids
  assert sum(g.new_tokens) / sum(g.target_forwards) > 1.2


def test_on_eagle3_host_training_lowers_the_loss_and_the_drafter_is_lossless(tiny_layers, tmp_path):
  """By default (`own_head`) ParallelSpec trains on EAGLE-3's host: the fused captured layers as the feature, a normed
  output and its own draft-vocabulary head, soft cross-entropy only. The loss falls, the masks learn, and the
  drafter (reading the same captured layers when decoding) keeps greedy output token for token at batch 4 and
  1, and through a checkpoint."""
  from specjax.io import checkpoint
  from specjax.drafters import eagle, registry
  t, train, held, _ = tiny_layers
  c = loop.TrainConfig(**CFG).resolved()
  assert c.own_head
  recipe = ParallelSpecRecipe(t, train, held, c)
  assert recipe.capture_for(t.cfg, c) == eagle.fuse_layers(t.cfg.layers)
  batch = recipe.batch(np.arange(8), 0)
  assert "noise" not in batch and "layers" in batch
  before, acc0 = recipe.loss(recipe.init(), recipe.consts, batch)
  d, summary = loop.fit(t, train, held, c, tmp_path / "run", progress=False, log=lambda m: None)
  p = d.params["p"].get_value()
  after, acc1 = recipe.loss(p, recipe.consts, batch)
  floor = _floor(t, recipe, batch, c.heads, three=True)
  assert float(after) - floor < 0.8 * (float(before) - floor) and float(acc1[1:].mean()) > float(acc0[1:].mean())
  assert d.capture == eagle.fuse_layers(t.cfg.layers) and d.own_head == len(recipe.vocab)
  assert {"head", "fuse/w", "norm", "mask/e"} <= set(p)
  path = checkpoint.save_drafter(tmp_path / "ps3.safetensors", d, t)
  loaded = registry.make(f"parallelspec:{path}")
  assert (loaded.fuse, loaded.own_head) == (d.fuse, d.own_head)
  for prompts in (PROMPTS, PROMPTS[1:2]):
    base = specjax.generate(t, prompts, max_new_tokens=30)
    assert specjax.generate(t, prompts, max_new_tokens=30, drafter=loaded).token_ids == base.token_ids


def test_weights_of_the_other_host_are_refused():
  """A configuration on EAGLE-3's host (for_target's default) refuses EAGLE-1's weights and the other way round,
  naming the weights that differ, before anything compiles."""
  t = tiny_target(seed=1, scale=8.0)
  one = parallelspec.initial(t, 4, seed=0)
  with pytest.raises(ValueError, match="fuse/w"):
    ParallelSpec.for_target(t).with_weights(one)
  three = parallelspec.initial(t, 4, seed=0, three=True)
  with pytest.raises(ValueError, match="fuse/w"):
    ParallelSpec.for_target(t, fuse=()).with_weights(three)
  assert ParallelSpec.for_target(t, fuse=()).with_weights(one).fuse == ()
