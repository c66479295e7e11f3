"""Hidden Transfer and AdaDecode, the target drafting for itself (the contract every drafter owes, greedy ==
plain, sampling, checkpoints: tests/test_drafter_contract.py and tests/test_sampling.py). Here: each recipe
trains on the tiny target (loss falls, the checkpoint keeps what training measured), the recipe's forward is the
decoder's draft, and AdaDecode's confidence gate decides what is drafted."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import specjax
from specjax.drafters import registry
from specjax.drafters.adadecode import AdaDecode
from specjax.drafters.early_exit import EarlyExit
from specjax.io import checkpoint
from specjax.models.llama import causal_mask
from specjax.protocol import Context, Models, Prefill
from specjax.testing import tiny_target
from specjax.train import data as data_lib
from specjax.train import loop
from specjax.train.adadecode import replay

PROMPTS = [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]


def _fit(tiny_distilled, tmp_path, name, full, **cfg):
  t, seqs, d = tiny_distilled
  feats = [data_lib.features(t, s, d / f"{name}-{k}", shard_size=8, full=full, capture=(0,), progress=False)
           for k, s in (("train", seqs[:32]), ("held", seqs[32:]))]
  c = loop.TrainConfig(drafter=name, exit_layer=1, lr=2e-2, warmup=5, save_every=1000, draft_vocab=32,
                       eval_positions=256, **cfg).resolved()
  recipe = loop.RECIPES[name](t, *feats, c)
  batch = recipe.batch(np.arange(c.batch), 0)
  before = float(recipe.loss(recipe.init(), recipe.consts, batch)[0])
  drafter, summary = loop.fit(t, *feats, c, tmp_path / "run", progress=False, log=lambda m: None)
  path = checkpoint.save_drafter(tmp_path / f"{name}.safetensors", drafter, t)
  return t, recipe, batch, before, drafter, summary, path


def test_hidden_transfer_trains_and_its_draft_is_the_recipes_forward(tiny_distilled, tmp_path):
  t, recipe, batch, before, d, summary, path = _fit(tiny_distilled, tmp_path, "hidden-transfer", True, steps=20,
                                                    batch=4, eval_every=20, heads=3, nodes=6)
  p = {"w": d.params["w"][...]}
  assert float(recipe.loss(p, recipe.consts, batch)[0]) < 0.9 * before
  assert len(summary["top1"]) == 3 and summary["tau"] > 1.0 and d.accuracy and d.steps == 3
  # The decoder's draft call (drafters/hidden_transfer.py) at a prompt's end equals the recipe's forward there.
  seq = PROMPTS[3] + PROMPTS[0]
  out = t.model(jnp.asarray([seq]), jnp.arange(len(seq))[None], None, causal_mask(1, len(seq)), capture=(0,))
  x = out.layer_hidden[0]
  logits = recipe.logits(p, recipe.consts, x, jnp.ones((1, len(seq)), bool))[0, -1]        # [K, N]
  loaded = registry.make(f"hidden-transfer:{path}")
  m = Models(t.model, nnx.merge(loaded.graphdef, loaded.params))
  tokens = jnp.zeros((1, 32), jnp.int32).at[0, :len(seq) + 1].set(jnp.asarray(seq + [0]))
  ctx = Context(tokens, jnp.asarray([len(seq)]), jnp.asarray([len(seq) + 1]), jnp.zeros(1, bool))
  state = loaded.init(m, ctx, Prefill(out.hidden, {0: x}))
  tree, _ = loaded.propose(m, state, ctx)
  top = np.asarray(recipe.vocab)[np.argmax(np.asarray(logits), -1)]
  first = [int(tree.tokens[0, i]) for i, c in enumerate(loaded.shape.choices, 1) if c == (0,) * len(c)]
  assert first == top[:len(first)].tolist()


def test_adadecode_trains_and_its_checkpoint_keeps_the_calibrated_threshold(tiny_distilled, tmp_path):
  t, recipe, batch, before, d, summary, path = _fit(tiny_distilled, tmp_path, "adadecode", False, steps=30, batch=64,
                                                    eval_every=30)
  after = float(recipe.loss({k: d.params[k][...] for k in ("w", "b")}, recipe.consts, batch)[0])
  assert after < before
  gains = {k: v["gain"] for k, v in summary["by_threshold"].items()}
  assert d.calibrated == summary["threshold"] and gains[f"{d.calibrated:.2f}"] == max(gains.values())
  assert registry.make(f"adadecode:{path}").confidence == d.calibrated
  assert registry.make(f"adadecode:{path}", threshold=0.95).confidence == 0.95


def test_replay_counts_the_gated_chain():
  conf = np.array([[0.9, 0.9, 0.2, 0.9], [0.9, 0.9, 0.9, 0.9], [0.1, 0.9, 0.9, 0.9]])
  ok = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]], bool)
  acc, calls = replay(conf, ok, np.ones_like(ok), 0.5, 4)
  assert acc.tolist() == [2, 1, 0] and calls.tolist() == [3, 4, 1]


def test_adadecode_gate_decides_what_is_drafted():
  """Threshold 0: EarlyExit's chain exactly; above every confidence: nothing drafted, one token a forward."""
  t = tiny_target(seed=1, scale=8.0, eos_id=17)
  run = lambda d: specjax.generate(t, PROMPTS, max_new_tokens=16, drafter=d)
  always = run(EarlyExit.untrained(t, seed=4, exit_layer=1, gamma=3))
  zero = run(AdaDecode.untrained(t, seed=4, exit_layer=1, gamma=3, threshold=0.0))
  never = run(AdaDecode.untrained(t, seed=4, exit_layer=1, gamma=3, threshold=1.0))
  assert zero.token_ids == always.token_ids == never.token_ids
  assert zero.target_forwards == always.target_forwards and sum(always.target_forwards) < sum(always.new_tokens)
  assert never.target_forwards == never.new_tokens
  with pytest.raises(ValueError, match="width must be 1"):
    AdaDecode.untrained(t, exit_layer=1, width=2).validate()
