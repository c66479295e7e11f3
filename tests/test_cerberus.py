"""Cerberus: each head reads the previous head's state, the gate turns rows into plain autoregressive steps
losslessly, and training lowers the loss and fits the gate. (Greedy equality at batch 1 and 4 with the default
gate, the checkpoint round trip and wrong-target refusal: test_drafter_contract.py; sampling: test_sampling.py.)"""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import specjax
from specjax.drafters import cerberus, medusa
from specjax.drafters.cerberus import Cerberus
from specjax.models.llama import causal_mask
from specjax.protocol import Context, Models, Prefill
from specjax.testing import tiny_target
from specjax.train import data as data_lib
from specjax.train import loop
from specjax.train.cerberus import CerberusRecipe

PROMPTS = [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]


def test_heads_pass_sequential_knowledge():
  """With the previous-head half of every block zero, the heads are Medusa's; changing head 0 changes head 1
  only through that half, and never changes an earlier head."""
  rng = np.random.default_rng(0)
  K, L, H = 3, 2, 16
  w = jnp.asarray(rng.normal(size=(K, L, 2 * H, H)) * 0.3, jnp.float32)
  b = jnp.asarray(rng.normal(size=(K, L, H)) * 0.1, jnp.float32)
  hn = jnp.asarray(rng.normal(size=(5, H)), jnp.float32)
  own = w.at[:, :, H:].set(0.0)
  np.testing.assert_allclose(np.asarray(cerberus.apply({"w": own, "b": b}, hn)),
                             np.asarray(medusa.apply({"w": own[:, :, :H], "b": b}, hn)), atol=1e-5)
  out = cerberus.apply({"w": w, "b": b}, hn)
  moved = cerberus.apply({"w": w.at[0].add(0.5), "b": b}, hn)
  assert np.abs(np.asarray(moved[:, 1] - out[:, 1])).max() > 1e-3
  cut = cerberus.apply({"w": w.at[0].add(0.5).at[1, :, H:].set(0.0), "b": b}, hn)
  ref = cerberus.apply({"w": w.at[1, :, H:].set(0.0), "b": b}, hn)
  np.testing.assert_allclose(np.asarray(cut[:, 1]), np.asarray(ref[:, 1]), atol=1e-5)
  assert np.abs(np.asarray(cerberus.apply({"w": w.at[2].add(0.5), "b": b}, hn)[:, :2] - out[:, :2])).max() == 0


def test_gate_makes_lossless_autoregressive_steps():
  """Always, sometimes (a random gate stopping about half the rows) and never drafting all equal plain decoding
  at batch 4 (batch 1 with the default gate: test_drafter_contract.py); never drafting commits one token a target
  forward; sometimes lies between."""
  t = tiny_target(seed=1, scale=8.0, eos_id=17)
  d = Cerberus.untrained(t, seed=4, nodes=6, gate_bias=0.0)
  tau = {}
  for n, prompts in ((4, PROMPTS),):
    base = specjax.generate(t, prompts, max_new_tokens=16).token_ids
    for gate in (0.0, 0.5, 1.5):
      g = specjax.generate(t, prompts, max_new_tokens=16, drafter=d, gate=gate)
      assert g.token_ids == base, (n, gate)
      tau[n, gate] = sum(g.new_tokens) / sum(g.target_forwards)
  assert tau[4, 1.5] == 1.0
  assert tau[4, 0.0] > tau[4, 0.5] > 1.0


def test_a_gated_row_does_not_draft_at_its_first_step():
  """The first step's state is the token before the root, where checkpoints trained before data.FIRST_DRAFT_POS
  never saw the heads or gate, and where the gate's entropy input is the template's, not the answer's: a gated
  row (gate > 0) proposes nothing there however sure the gate is, and drafts from its second step on; gate 0
  drafts at every step."""
  t = tiny_target(seed=1, scale=8.0, eos_id=17)
  d = Cerberus.untrained(t, seed=4, nodes=6, gate_bias=20.0)              # p = 1: the gate always says draft
  seq = PROMPTS[3] + PROMPTS[0]
  out = t.model(jnp.asarray([seq, seq]), jnp.broadcast_to(jnp.arange(len(seq)), (2, len(seq))), None,
                causal_mask(2, len(seq)))
  tokens = jnp.zeros((2, 32), jnp.int32).at[:, :len(seq)].set(jnp.asarray(seq))
  # Row 0 at its first step (root = the last prompt token); row 1 three tokens later, the same tokens as prompt.
  ctx = Context(tokens, jnp.asarray([len(seq) - 1, len(seq) - 1]), jnp.asarray([len(seq), len(seq) - 3]),
                jnp.zeros(2, bool))
  for gate, drafted in ((0.5, [False, True]), (0.0, [True, True])):
    g = dataclasses.replace(d, gate=gate)
    m = Models(t.model, nnx.merge(g.graphdef, g.params))
    tree, _ = g.propose(m, g.init(m, ctx, Prefill(out.hidden[:, :-1], {})), ctx)
    assert (np.asarray(tree.parent)[:, 1:] >= 0).any(1).tolist() == drafted, gate


def test_auto_sets_the_gate_from_measured_step_costs(tmp_path, monkeypatch):
  """tree_budget="auto" times a drafting and a plain step and drafts where the gate's p >= (cost ratio - 1) / G,
  G = (held-out tau - 1) / hit rate: the dearer a draft, the higher the threshold, never drafting past 1; the
  output stays plain decoding's."""
  d = dataclasses.replace(Cerberus(nodes=4), heldout_tau=(("4", 1.7),), hit_rate=0.4)
  assert d.gated(1.0).gate == 0.0 and d.gated(2.0).gate == pytest.approx(1.0 / 1.75, abs=1e-4)
  assert d.gated(3.0).gate > 1.0
  assert dataclasses.replace(d, hit_rate=0.0).gated(2.0) is None and medusa.Medusa().gated(2.0) is None
  monkeypatch.setenv("SPECJAX_COST_CACHE", str(tmp_path / "costs.json"))
  t = tiny_target(seed=1, scale=8.0, eos_id=17)
  u = dataclasses.replace(Cerberus.untrained(t, seed=4, nodes=6, gate_bias=0.0), heldout_tau=(("6", 1.6),),
                          hit_rate=0.5)
  g = specjax.generate(t, PROMPTS, max_new_tokens=16, drafter=u, tree_budget="auto")
  assert g.token_ids == specjax.generate(t, PROMPTS, max_new_tokens=16).token_ids
  assert g.drafter == "cerberus"
  assert g.budget == f"nodes=6,gate={u.gated(g.budget_ms['nodes=6'] / g.budget_ms['none']).gate:g}"


def test_a_row_whose_drafts_fail_stops_drafting():
  """With a recorded hit worth (gain), each row weighs the gate's p by what its own drafts accepted: nothing seen
  is the plain rule p >= gate, failures raise the row's threshold, successes lower it; 0 still always drafts. On a
  tiny target whose random heads are rarely right but claimed worth 9 tokens a hit, the rows soon stop drafting
  (tau falls to near 1 against the uncorrected gate's) and the output stays plain decoding's."""
  p = jnp.asarray([0.3, 0.3, 0.3, 0.3, 0.9])
  seen = jnp.asarray([[0.0, 0.0], [3.0, 0.0], [3.0, 9.0], [3.0, 0.0], [40.0, 0.0]])
  assert cerberus.drafts(p, seen, 0.25, 2.0).tolist() == [True, False, True, False, False]
  assert cerberus.drafts(p, seen, 0.0, 2.0).all() and not cerberus.drafts(p, seen * 0, 1.5, 2.0).any()
  t = tiny_target(seed=1, scale=8.0, eos_id=17)
  u = dataclasses.replace(Cerberus.untrained(t, seed=4, nodes=6, gate_bias=4.0, gate=0.5), hit_rate=0.2,
                          heldout_tau=(("6", 2.8),))
  assert u.gain() == pytest.approx(9.0)
  base = specjax.generate(t, PROMPTS, max_new_tokens=24)
  tau = {}
  for name, d in (("corrected", u), ("gate alone", dataclasses.replace(u, hit_rate=0.0))):
    g = specjax.generate(t, PROMPTS, max_new_tokens=24, drafter=d)
    assert g.token_ids == base.token_ids, name
    tau[name] = sum(g.new_tokens) / sum(g.target_forwards)
  assert 1.0 <= tau["corrected"] < tau["gate alone"] - 0.1, tau


@pytest.fixture(scope="module")
def tiny_data(tiny_distilled):
  """The tiny target and features of its own answers (train, held-out), as test_train.py's."""
  t, seqs, d = tiny_distilled
  return (t, data_lib.features(t, seqs[:32], d / "train", shard_size=8, progress=False),
          data_lib.features(t, seqs[32:], d / "held", shard_size=8, progress=False))


CFG = dict(drafter="cerberus", steps=30, batch=64, lr=2e-2, warmup=5, eval_every=30, save_every=30, heads=3,
           draft_vocab=32, nodes=6, eval_positions=512)


def test_training_lowers_the_loss_and_fits_the_gate(tiny_data, tmp_path):
  t, train, held = tiny_data
  c = loop.TrainConfig(**CFG).resolved()
  recipe = CerberusRecipe(t, train, held, c)
  batch = recipe.batch(np.arange(256), 0)
  before, _ = recipe.loss(recipe.init(), recipe.consts, batch)
  d, summary = loop.fit(t, train, held, c, tmp_path / "run", progress=False, log=lambda m: None)
  p = {k: d.params[k][...] for k in ("w", "b", "gate_w", "gate_ab")}
  after, acc = recipe.loss(p, recipe.consts, batch)
  assert float(after) < 0.8 * float(before)
  assert acc.shape == (4,) and summary["top1"][0] > 0.3 and summary["tau"] > 1.2
  gate = summary["gate"]
  assert gate["accuracy"] > 0.55 and 1.0 <= gate["tau_gated"] <= gate["tau_always"]
  assert float(jnp.abs(p["gate_w"]).max()) > 0          # the gate was trained
  assert d.hit_rate == round(summary["top1"][0], 4) > 0  # what tree_budget="auto" sets its threshold by
  base = specjax.generate(t, PROMPTS, max_new_tokens=30)
  assert specjax.generate(t, PROMPTS, max_new_tokens=30, drafter=d).token_ids == base.token_ids
