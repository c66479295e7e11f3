"""Draft-model speculation, self-speculation and staged speculation: greedy output equals
autoregressive output on the default model, batch 4 (tiny random models: tests/test_drafter_contract.py); the
target as its own draft accepts every drafted token (the draft cache stays right after every kind of
acceptance); a draft with another tokenizer is refused. The sampled-draft chain's statistical test
is in test_sampling.py ("draft-model-q")."""
import jax.numpy as jnp
import numpy as np
import pytest

import specjax
from specjax.drafters import registry
from specjax.drafters.draft_model import DraftModel, SelfSpec, Staged
from specjax.testing import tiny_target

PROMPTS = [[5, 9, 13, 5, 9, 13, 5], [7, 3, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]


@pytest.fixture(scope="module")
def pair():
  """A tiny 3-layer target and an unrelated tiny draft of the same sizes and tokenizer (same sizes: the
  target drafting for itself reuses the pair's compiled program, only the weights differ)."""
  return tiny_target(seed=1, scale=8.0, eos_id=17, layers=3), tiny_target(seed=5, scale=8.0, eos_id=17, layers=3)


def test_target_as_its_own_draft_accepts_everything(pair):
  """tau = gamma + 1 at every step but the last (cut by the budget): the cache rollback is exact."""
  t, _ = pair
  gamma = 3
  base = specjax.generate(t, PROMPTS, max_new_tokens=16)
  g = specjax.generate(t, PROMPTS, max_new_tokens=16, drafter=DraftModel.from_target(t, gamma=gamma))
  assert g.token_ids == base.token_ids
  for hist, fw in zip(g.accepted_hist, g.target_forwards):
    assert hist[gamma] >= fw - 1 and fw <= 4, (hist, fw)


def test_draft_with_another_tokenizer_is_refused(pair):
  t, _ = pair
  other_vocab = DraftModel.from_target(tiny_target(seed=2, vocab=80, eos_id=17))
  with pytest.raises(ValueError, match="does not share the target's tokenizer"):
    specjax.generate(t, PROMPTS[:1], max_new_tokens=2, drafter=other_vocab)
  other_eos = DraftModel.from_target(tiny_target(seed=2, eos_id=3))
  with pytest.raises(ValueError, match="does not share the target's tokenizer"):
    specjax.generate(t, PROMPTS[:1], max_new_tokens=2, drafter=other_eos)


def test_names_and_options_are_checked(pair):
  t, _ = pair
  assert registry.make("self-spec:3").exit_layer == 3
  assert registry.make("staged:2", gamma=2).exit_layer == 2
  with pytest.raises(ValueError, match="exit_layer must be an integer"):
    registry.make("self-spec:x")
  with pytest.raises(ValueError, match="exceeds the target's 3 layers"):
    specjax.generate(t, PROMPTS[:1], max_new_tokens=2, drafter="self-spec:4")
  with pytest.raises(ValueError, match="gamma"):
    registry.make("self-spec", gamma=0)
  with pytest.raises(ValueError, match="width must be 1"):
    registry.make("staged", width=2)
  with pytest.raises(ValueError, match="option draft_layers must be an integer"):
    registry.make("draft-model", draft_layers="2")            # refused before the model is read


@pytest.fixture(scope="module")
def default_case(default_target):
  """Four chat prompts and the target's own greedy answers (batch 4, computed once for every variant)."""
  t = default_target
  prompts = ["Repeat after me: the cat sat on the mat, the cat sat on the mat.", "What is 7 times 8?",
             "Name three colours.", "Translate 'good morning' into French."]
  ids = specjax.api.encode_prompts(t, prompts, True)
  return ids, specjax.generate(t, ids, max_new_tokens=8).token_ids


@pytest.mark.parametrize("name", ["self-spec", "staged", "draft-model"])
def test_greedy_equals_autoregressive_on_the_default_model(default_target, default_case, name):
  """Every variant on SmolLM2 at batch 4 (batch 1 is covered by the engine's per-row bookkeeping and
  kept out for the suite's time)."""
  t = default_target
  drafter = {"self-spec": SelfSpec(exit_layer=20, gamma=2, width=2), "staged": Staged(exit_layer=24, gamma=2),
             "draft-model": DraftModel.from_target(t, draft_layers=4, gamma=2)}[name]
  ids, base = default_case
  assert specjax.generate(t, ids, max_new_tokens=8, drafter=drafter).token_ids == base


def test_early_exit_adapter_trains_saves_and_decodes_losslessly(tiny_distilled, tmp_path):
  """The adapter recipe on the tiny target (a few steps): the loss falls from the plain exit head's, the
  checkpoint loads by path and decodes greedy == autoregressive at batch 4, and keeps its exit layer."""
  from specjax.io import checkpoint
  from specjax.train import data as data_lib
  from specjax.train import loop
  from specjax.train.early_exit import EarlyExitRecipe
  t, seqs, d = tiny_distilled
  feats = [data_lib.features(t, s, d / f"exit-{n}", shard_size=8, capture=(0,), progress=False)
           for n, s in (("train", seqs[:32]), ("held", seqs[32:]))]
  c = loop.TrainConfig(drafter="early-exit", exit_layer=1, steps=30, batch=64, lr=2e-2, warmup=5, eval_every=30,
                       save_every=30, draft_vocab=32, eval_positions=256).resolved()
  recipe = EarlyExitRecipe(t, *feats, c)
  batch = recipe.batch(np.arange(256), 0)
  before = float(recipe.loss(recipe.init(), recipe.consts, batch)[0])
  drafter, summary = loop.fit(t, *feats, c, tmp_path / "run", progress=False, log=lambda m: None)
  after = float(recipe.loss({k: drafter.params[k][...] for k in ("w", "b")}, recipe.consts, batch)[0])
  assert after < before
  path = checkpoint.save_drafter(tmp_path / "ee.safetensors", drafter, t)
  g = specjax.generate(t, PROMPTS, max_new_tokens=12, drafter=f"early-exit:{path}", gamma=2)
  assert g.token_ids == specjax.generate(t, PROMPTS, max_new_tokens=12).token_ids
  with pytest.raises(ValueError, match="trained for exit_layer 1"):
    registry.make(f"early-exit:{path}", exit_layer=2)


def test_shipped_early_exit_adapter_loads_by_name_and_refuses_another_target(pair):
  from specjax.io import checkpoint
  d = registry.make("early-exit", gamma=1)
  assert (d.exit_layer, d.draft_vocab, d.gamma) == (8, 4096, 1)
  with pytest.raises(checkpoint.CheckpointError, match="trained for another target"):
    specjax.generate(pair[0], PROMPTS[:1], max_new_tokens=2, drafter=d)
