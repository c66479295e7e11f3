"""Every matmul states its numerics (specjax/numerics.py).

The CPU computes float32 dots exactly whatever they ask for, so no output test run here can see a
dot that would take TF32 on a GPU or one bfloat16 pass on a TPU. These tests read the lowered
programs instead: every dot_general and convolution in the decode program of every drafter (greedy in
float32, sampling with bfloat16 weights) and in every training recipe's step must carry
Precision.HIGHEST or an explicit dot algorithm. "fast" must really switch to the backend default.
"""
import re

import jax
import numpy as np
import pytest

from specjax import api, numerics
from specjax.drafters import registry
from specjax.drafters.cerberus import Cerberus
from specjax.drafters.adadecode import AdaDecode
from specjax.drafters.clover import Clover1, Clover2
from specjax.drafters.draft_model import DraftModel, SelfSpec, Staged
from specjax.drafters.eagle import Eagle, Eagle3
from specjax.drafters.early_exit import EarlyExit
from specjax.drafters.hidden_transfer import HiddenTransfer
from specjax.drafters.medusa import Medusa
from specjax.drafters.parallelspec import ParallelSpec
from specjax.testing import tiny_target
from specjax.train import data as data_lib
from specjax.train import loop

PROMPTS = [[3, 4, 5, 3, 4, 5, 6], [7, 8, 9, 10]]
_OP = re.compile(r"stablehlo\.(dot_general|convolution|dot)\b[^\n]*")


def dots(text: str) -> list[str]:
  """Every dot / convolution op of a lowered program's StableHLO text, one line each."""
  return [m.group(0) for m in _OP.finditer(text)]


def unpinned(text: str) -> list[str]:
  return [d for d in dots(text) if "algorithm =" not in d and "precision = [HIGHEST, HIGHEST]" not in d]


def drafters(t):
  """One instance of every registered drafter on target t (random weights where it has weights)."""
  return {"none": "none", "pld": "pld", "lookahead": "lookahead",
          "medusa": Medusa.untrained(t, seed=4, nodes=6), "clover": Clover1.untrained(t, seed=4),
          "clover2": Clover2.untrained(t, seed=4), "eagle": Eagle.untrained(t, seed=4),
          "eagle3": Eagle3.untrained(t, seed=4, draft_vocab=32), "self-spec": SelfSpec(exit_layer=1, gamma=2),
          "staged": Staged(exit_layer=1, gamma=2, lookup=2), "early-exit": EarlyExit.untrained(t, exit_layer=1),
          "draft-model": DraftModel.from_target(tiny_target(seed=2, scale=10.0, dtype=t.model.dtype), gamma=2),
          "parallelspec": ParallelSpec.untrained(t, seed=4, draft_vocab=32), "cerberus": Cerberus.untrained(t, seed=4),
          "adadecode": AdaDecode.untrained(t, exit_layer=1, threshold=0.1),
          "hidden-transfer": HiddenTransfer.untrained(t, transfer_layer=1, draft_vocab=32)}


def test_every_registered_drafter_is_checked():
  assert set(drafters(tiny_target(seed=0))) == set(registry.names())


@pytest.mark.parametrize("dtype,sampling", [("float32", {}), ("bfloat16", dict(temperature=1.0, top_k=8))])
def test_decode_programs_pin_every_dot(dtype, sampling):
  t = tiny_target(seed=0, scale=10.0, dtype=jax.numpy.dtype(dtype))
  total = 0
  for name, d in drafters(t).items():
    text = api.lower(t, PROMPTS, drafter=d, **sampling).as_text()
    found = dots(text)
    assert found, f"{name}: no dot found; has the StableHLO spelling changed?"
    bad = unpinned(text)
    assert not bad, f"{name} ({dtype}): {len(bad)} of {len(found)} dots take the backend's default, e.g. {bad[0][:300]}"
    total += len(found)
  print(dtype, "dots checked:", total)


def test_fast_precision_takes_the_backend_default():
  t = tiny_target(seed=0, scale=10.0)
  d = Eagle.untrained(t, seed=4)
  text = api.lower(t, PROMPTS, drafter=d, precision="fast").as_text()
  assert dots(text) and len(unpinned(text)) == len(dots(text))
  with pytest.raises(ValueError, match="precision must be one of"):
    api.lower(t, PROMPTS, precision="tf32")


def test_training_steps_pin_every_dot(tiny_distilled):
  t, seqs, d = tiny_distilled
  for name, recipe_cls in loop.RECIPES.items():
    c = loop.TrainConfig(drafter=name, steps=2, draft_vocab=32, nodes=6, eval_positions=64, heads=3,
                         exit_layer=1).resolved()
    cap = recipe_cls.capture_for(t.cfg, c)
    full = recipe_cls.full
    feats = [data_lib.features(t, s, d / f"numerics-{name}-{k}", shard_size=8, full=full, capture=cap, progress=False)
             for k, s in (("train", seqs[:32]), ("held", seqs[32:]))]
    recipe = recipe_cls(t, *feats, c)
    batch = recipe.batch(np.arange(64 if not full else 4), 0)
    step = jax.jit(jax.value_and_grad(recipe.loss, has_aux=True))
    text = step.lower(recipe.init(), recipe.consts, batch).as_text()
    assert dots(text), name
    bad = unpinned(text)
    assert not bad, f"training {name}: {len(bad)} of {len(dots(text))} dots unpinned, e.g. {bad[0][:300]}"


def test_policy_is_read_at_trace_time():
  a = jax.numpy.ones((2, 3))
  assert numerics.precision(a, a) == jax.lax.Precision.HIGHEST
  b = a.astype(jax.numpy.bfloat16)
  assert numerics.precision(b, b) == jax.lax.DotAlgorithmPreset.BF16_BF16_F32
  with numerics.scope("fast"):
    assert numerics.precision(a, a) is None
  assert numerics.precision(a, a) == jax.lax.Precision.HIGHEST


def test_divergence_names_the_first_differing_token_and_its_gap():
  t = tiny_target(seed=0, scale=10.0)
  base = api.generate(t, PROMPTS[:1], max_new_tokens=6).token_ids[0]
  assert api.divergence(t, PROMPTS[0], base, list(base)) is None
  other = base[:3] + [(base[3] + 1) % t.cfg.vocab] + base[4:]
  d = api.divergence(t, PROMPTS[0], base, other)
  assert d["position"] == 3 and d["gap"] == pytest.approx(api.next_token_gap(t, PROMPTS[0] + base[:3])) and d["gap"] > 0


def test_generation_reports_its_precision_and_fast_runs():
  t = tiny_target(seed=0, scale=10.0)
  exact = api.generate(t, PROMPTS, max_new_tokens=6, drafter="pld")
  fast = api.generate(t, PROMPTS, max_new_tokens=6, drafter="pld", precision="fast")
  assert (exact.precision, fast.precision) == ("exact", "fast")
  assert fast.token_ids == exact.token_ids       # the CPU computes float32 exactly either way


def test_cli_check_reports_identical_outputs(monkeypatch, capsys):
  from specjax import cli
  t = tiny_target(seed=0, scale=10.0)
  monkeypatch.setattr(cli, "load_target", lambda model, dtype, **kw: t)
  code = cli.main(["generate", "--no-chat", "--drafter", "pld", "--check", "--max-new-tokens", "8", "--json",
                   "t3 t4 t5 t3 t4 t5", "t7 t8 t9"])
  out, err = capsys.readouterr()
  assert code == 0
  rows = [__import__("json").loads(line) for line in out.splitlines()]
  assert [r["check"] for r in rows] == [{"identical": True}] * 2
  with pytest.raises(SystemExit) as e:
    cli.main(["generate", "--no-chat", "--check", "--temperature", "0.7", "t3"])
  assert e.value.code == 2
  assert "--check compares greedy outputs" in capsys.readouterr().err


def test_cli_precision_reaches_the_loader(monkeypatch, capsys):
  from specjax import cli
  t = tiny_target(seed=0, scale=10.0)
  seen = []
  monkeypatch.setattr(cli, "load_target", lambda model, dtype, **kw: seen.append(kw) or t)
  assert cli.main(["generate", "--no-chat", "--precision", "fast", "--max-new-tokens", "2", "t3"]) == 0
  assert seen == [{"precision": "fast"}]
