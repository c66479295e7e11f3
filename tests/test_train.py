"""Drafter training: data order, loss goes down, exact resume, checkpoint errors (the round trip itself:
tests/test_drafter_contract.py)."""
import dataclasses

import numpy as np
import pytest

import specjax
from specjax.drafters import registry
from specjax.drafters.medusa import Medusa
from specjax.io import checkpoint
from specjax.testing import tiny_target
from specjax.train import data as data_lib
from specjax.train import loop
from specjax.train.medusa import MedusaRecipe


@pytest.fixture(scope="module")
def tiny_data(tiny_distilled):
  """The tiny target, its own greedy answers, and their features (train, held-out)."""
  t, seqs, d = tiny_distilled
  train = data_lib.features(t, seqs[:32], d / "train", shard_size=8, progress=False)
  held = data_lib.features(t, seqs[32:], d / "held", shard_size=8, progress=False)
  return t, train, held, seqs, d


def test_features_record_the_targets_predictions(tiny_data):
  t, train, _, seqs, d = tiny_data
  # Self-distilled greedy text: the target's top-1 at a position is the next token of the sequence.
  nxt = train.valid_ahead(1)
  agree = (train.top_ids[:-1, 0] == train.token[1:])[nxt[:-1]]
  assert agree.mean() > 0.99
  assert len(train) == sum(len(s["answer"]) + 1 for s in seqs[:32])
  again = data_lib.features(t, seqs[:32], d / "train", shard_size=8, progress=False)   # cached shards
  assert np.array_equal(np.asarray(again.hidden, np.float32), np.asarray(train.hidden, np.float32))


def test_batches_depend_only_on_seed_and_step():
  a = [loop.batch_indices(100, s, 16, 0) for s in range(12)]
  b = [loop.batch_indices(100, s, 16, 0) for s in range(12)]
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert len(set(np.concatenate(a[:6]).tolist())) == 96          # one epoch: no repeats


CFG = dict(steps=40, batch=64, lr=2e-2, warmup=5, eval_every=20, save_every=10, heads=3, draft_vocab=32, nodes=6,
           eval_positions=512)


def test_training_lowers_the_loss_and_improves_heads(tiny_data, tmp_path):
  t, train, held, _, _ = tiny_data
  c = loop.TrainConfig(**CFG).resolved()
  recipe = MedusaRecipe(t, train, held, c)
  batch = recipe.batch(np.arange(256), 0)
  before = float(recipe.loss(recipe.init(), recipe.consts, batch)[0])
  d, summary = loop.fit(t, train, held, c, tmp_path / "run", progress=False, log=lambda m: None)
  after = float(recipe.loss({"w": d.params["w"][...], "b": d.params["b"][...]}, recipe.consts, batch)[0])
  assert after < 0.8 * before
  assert summary["top1"][0] > 0.3 and summary["tau"] > 1.2


def test_resume_after_a_crash_ends_with_the_same_weights(tiny_data, tmp_path):
  t, train, held, _, _ = tiny_data
  c = loop.TrainConfig(**CFG)
  whole, _ = loop.fit(t, train, held, c, tmp_path / "a", progress=False, log=lambda m: None)
  loop.fit(t, train, held, c, tmp_path / "b", stop_after=20, progress=False, log=lambda m: None)   # "killed" at 20
  resumed, _ = loop.fit(t, train, held, c, tmp_path / "b", progress=False, log=lambda m: None)
  for k in ("w", "b"):
    assert np.array_equal(np.asarray(whole.params[k][...]), np.asarray(resumed.params[k][...]))
  with pytest.raises(ValueError, match="other settings"):
    loop.fit(t, train, held, dataclasses.replace(c, lr=1e-2), tmp_path / "b", progress=False, log=lambda m: None)


def _write(t, d: Medusa, path):
  return checkpoint.save_drafter(path, d, t)


def test_bad_checkpoints_give_one_line_errors(tmp_path):
  t = tiny_target(seed=1, scale=8.0)
  path = _write(t, Medusa.untrained(t, seed=2, nodes=5), tmp_path / "m.safetensors")
  raw = path.read_bytes()
  with pytest.raises(checkpoint.CheckpointError, match="not found"):
    registry.make(f"medusa:{tmp_path / 'missing.safetensors'}")
  (tmp_path / "cut.safetensors").write_bytes(raw[:len(raw) - 100])
  with pytest.raises(checkpoint.CheckpointError, match="truncated"):
    registry.make(f"medusa:{tmp_path / 'cut.safetensors'}")
  flipped = bytearray(raw)
  flipped[-10] ^= 0xFF
  (tmp_path / "bad.safetensors").write_bytes(bytes(flipped))
  with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
    registry.make(f"medusa:{tmp_path / 'bad.safetensors'}")
  (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
  with pytest.raises(checkpoint.CheckpointError, match="not a specjax drafter checkpoint"):
    registry.make(f"medusa:{tmp_path / 'junk.safetensors'}")
  # Beside another target (same shapes, other weights): refused before any work.
  other = tiny_target(seed=9, scale=8.0)
  with pytest.raises(ValueError, match="trained for another target"):
    specjax.generate(other, [[1, 2, 3]], max_new_tokens=4, drafter=f"medusa:{path}")
  wide = tiny_target(seed=1, scale=8.0, hidden=48, heads=6, kv_heads=2)
  with pytest.raises(ValueError, match="trained for another target"):
    specjax.generate(wide, [[1, 2, 3]], max_new_tokens=4, drafter=f"medusa:{path}")


def test_features_reuse_more_captured_layers_only_where_the_exact_ones_are_missing(tmp_path, monkeypatch):
  """A run asking for fewer captured layers reads a run's features with more of them, unless its own exact
  features exist: those win (smaller, and the superset may be another run's, still being written)."""
  import json

  from specjax.train import prepare_data
  monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "cache"))
  t = tiny_target(seed=0, scale=10.0)
  t.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
  rng = np.random.default_rng(0)
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": " ".join(f"t{x}" for x in rng.integers(2, 60, 5))})
                             + "\n" for i in range(120)))
  kw = dict(max_prompts=6, heldout_prompts=1, answer_tokens=4, prompts_dir=prompts, batch_size=8, progress=False)
  wide, _ = prepare_data(t, capture=(0, 1), **kw)
  root = next((tmp_path / "cache" / "train").iterdir())
  names = lambda: sorted(d.name for d in root.glob("features*"))
  assert names() == ["features-full-layers0-1-distill-a4-p256"]
  narrow, _ = prepare_data(t, capture=(1,), **kw)                        # reused: no new directory
  assert names() == ["features-full-layers0-1-distill-a4-p256"]
  np.testing.assert_array_equal(np.asarray(narrow.layers), np.asarray(wide.layers)[:, [1]])
  exact = root / "features-full-layers1-distill-a4-p256"
  exact.mkdir()
  prepare_data(t, capture=(1,), **kw)
  assert list((exact / "train").glob("shard_*.npz"))                     # its own features, made there


def test_heads_train_on_the_state_the_first_step_drafts_from(tiny_full):
  """Decoding's first step drafts from the prompt's second-to-last token (the prefill stops short of the root, whose
  KV the first verify writes; Medusa.init reads prompt_len - 2), a state the heads never saw in training before
  (Medusa's head 0 right on 0/24 Spec-Bench prompts there). That row, data.FIRST_DRAFT_POS, is now a training row
  of Medusa's and Clover's heads, with the answer's first tokens as its labels."""
  from specjax.train import sequence
  from specjax.train.clover import CloverRecipe
  t, train, held = tiny_full
  spans = sequence.spans(train)
  first = np.flatnonzero(train.pos == data_lib.FIRST_DRAFT_POS)
  assert len(first) == len(spans) and (train.pos[first + 1] == 0).all()       # one per sequence, before the root
  m = MedusaRecipe(t, train, held, loop.TrainConfig(**CFG).resolved())
  inside = m.lab_train[first, 0] >= 0                       # (the first answer token in the 32-token draft vocabulary)
  assert inside.sum() > len(first) // 2 and np.isin(first[inside], m.pos_train).all()
  # Head k's label there: the answer's token k+1 (position first + 2 + k), as a draft-vocabulary index.
  for k in range(CFG["heads"]):
    assert np.array_equal(m.lab_train[first, k], m.index[train.token[first + 2 + k]])
  c = loop.TrainConfig(**{**CFG, "drafter": "clover2", "batch": 4}).resolved()
  rows = [tuple(s) for s in spans[:4]]
  batch = CloverRecipe(t, train, held, c)._arrays(train, rows, np.random.default_rng(0), 512)   # every candidate
  for b, (s, e) in enumerate(rows):
    i = int(first[(first >= s) & (first < e)][0]) - s
    j = int(np.flatnonzero(np.asarray(batch["sel"][b]) == i)[0])
    assert np.asarray(batch["ys"][b, j, 0]) == train.token[s + i + 1]       # head 0 reads the root ...
    assert np.asarray(batch["tgt"][b, j, 0]) == i + 1                       # ... and predicts the answer's first token
