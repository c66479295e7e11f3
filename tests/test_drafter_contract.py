"""What every registered drafter owes the rest of the system, checked over the registry's names (a new drafter
is covered by its one registry line): its options build it again through the registry; a trained one's
checkpoint round trip keeps its weights and stored fields and is refused beside another target with a one-line
error; greedy output equals plain decoding token for token at batch 1 and batch 4, on a tiny random model.
Tests of what is particular to one method stay in that method's test file."""
import dataclasses
import json

import jax
import ml_dtypes
import numpy as np
import pytest

import specjax
from specjax.drafters import registry
from specjax.io import checkpoint
from specjax.protocol import options, stored, target_record
from specjax.testing import tiny_target

NAMES = registry.names()
TRAINED = registry.trained()
PROMPTS = [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]
MAX_NEW = 16
# Options where a drafter's defaults do not fit the 2-layer tiny target (the only per-drafter lines here):
# the self-speculating drafters exit after layer 1; siblings and lookup are exercised on the way.
TINY = {"self-spec": dict(exit_layer=1, width=2), "staged": dict(exit_layer=1, gamma=2, lookup=3),
        "early-exit": dict(exit_layer=1, gamma=2), "adadecode": dict(exit_layer=1, gamma=3, calibrated=0.1),
        "hidden-transfer": dict(transfer_layer=1, nodes=5)}


@pytest.fixture(scope="module")
def tiny():
  return tiny_target(seed=1, scale=8.0, eos_id=17)


@pytest.fixture(scope="module")
def baseline(tiny):
  return {n: specjax.generate(tiny, PROMPTS[1:1 + n] if n == 1 else PROMPTS, max_new_tokens=MAX_NEW).token_ids
          for n in (1, 4)}


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
  """name -> (the drafter on the tiny target, its checkpoint path or None). Trained drafters start from their
  starting weights plus noise (`untrained`); a draft network (`from_target`) drafts with an unrelated tiny model
  sharing the target's tokenizer; the others are built by name."""
  draft = tiny_target(seed=5, scale=8.0, eos_id=17)
  where = tmp_path_factory.mktemp("contract")
  cache = {}

  def get(name):
    if name not in cache:
      cls, opts = registry.drafter_class(name), TINY.get(name, {})
      if name in TRAINED:            # with a reduced draft vocabulary where it has one: a stored field off its default
        d = cls.untrained(tiny, seed=4, **({"draft_vocab": 24} if "draft_vocab" in stored(cls) else {}), **opts)
        cache[name] = d, checkpoint.save_drafter(where / f"{name}.safetensors", d, tiny)
      elif hasattr(cls, "from_target"):
        cache[name] = cls.from_target(draft, **opts), None
      else:
        cache[name] = registry.make(name, **opts), None
    return cache[name]
  return get


@pytest.mark.parametrize("name", NAMES)
def test_options_build_the_drafter_again(name, built):
  d, path = built(name)
  opts = {k: getattr(d, k) for k in options(d)}
  # Weightless drafters from their name; trained ones from their checkpoint, which restores all but the budget.
  source = f"{name}:{path}" if path else d if hasattr(type(d), "from_target") else name
  again = registry.make(source, **opts)
  assert type(again) is type(d) and again == d
  with pytest.raises(ValueError, match="no option"):
    registry.make(source, no_such_option=1)


@pytest.mark.parametrize("name", TRAINED)
def test_checkpoint_round_trip(name, built, tiny):
  d, path = built(name)
  loaded = registry.make(f"{name}:{path}")
  assert loaded.name == name and json.loads(loaded.trained_for) == target_record(tiny)
  assert {k: getattr(loaded, k) for k in stored(d)} == {k: getattr(d, k) for k in stored(d)}
  for f in dataclasses.fields(d):          # the tree budget is the decoding machine's: never restored
    if f.metadata.get("budget"):
      assert getattr(loaded, f.name) == f.default, f.name
  want, got = jax.tree.leaves(d.params), jax.tree.leaves(loaded.params)
  assert len(want) == len(got) and jax.tree.structure(d.params) == jax.tree.structure(loaded.params)
  for a, b in zip(want, got):             # floats stored in bfloat16, exactly; ids as they were
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.floating):
      a = a.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert b.dtype == a.dtype and np.array_equal(np.asarray(b), a)
  for k in set(options(d)) & set(stored(d)):      # a stored option is the checkpoint's: another value is refused
    if isinstance(getattr(d, k), int):
      with pytest.raises(checkpoint.CheckpointError, match=f"trained for {k}"):
        registry.make(f"{name}:{path}", **{k: getattr(d, k) + 1})


@pytest.mark.parametrize("name", TRAINED)
def test_checkpoint_for_another_target_is_refused(name, built):
  _, path = built(name)
  other = tiny_target(seed=9, scale=8.0, eos_id=17)             # same sizes, other weights
  with pytest.raises(checkpoint.CheckpointError, match="trained for another target") as e:
    specjax.generate(other, PROMPTS[:1], max_new_tokens=2, drafter=f"{name}:{path}")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_equals_plain_decoding_at_batch_1_and_4(name, built, tiny, baseline):
  d, path = built(name)
  drafter = f"{name}:{path}" if path else d           # trained: as loaded, bfloat16-rounded weights
  opts = TINY.get(name, {}) if path else {}
  opts = {k: v for k, v in opts.items() if k not in stored(d)}
  for n, prompts in ((1, PROMPTS[1:2]), (4, PROMPTS)):
    g = specjax.generate(tiny, prompts, max_new_tokens=MAX_NEW, drafter=drafter, **opts)
    assert g.token_ids == baseline[n], (name, n)
