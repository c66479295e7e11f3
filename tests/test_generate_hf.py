"""Generation with the default model (SmolLM2-135M-Instruct, float32) against Hugging Face transformers.

- greedy: specjax's tokens equal transformers' `generate(do_sample=False)` token for token, including
  stopping at the same end-of-sequence token, for several chat prompts (ids rendered and encoded by
  specjax, the same ids fed to transformers);
- a batch of prompts of different lengths (one past the 64-token padding bucket) equals each prompt
  run alone, row for row;
- sampling (temperature 0.8, top_p 0.9): a fixed seed reproduces the same tokens, other seeds differ,
  and top_k=1 sampling is greedy decoding.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import specjax.io as sio
from specjax.api import generate

MAX_NEW = 32

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant. Answer in one line."},
     {"role": "user", "content": "Name three primary colours."}],
    # a longer multi-turn conversation: more than 64 tokens, so it lands in a larger padding bucket
    [{"role": "user", "content": "I am planning a small vegetable garden on a sunny balcony in a city apartment."},
     {"role": "assistant", "content": "That sounds lovely! Balcony gardens do well with containers, good soil "
                                      "and regular watering. What would you like to grow?"},
     {"role": "user", "content": "Which three vegetables are easiest for a beginner, and why?"}],
]


@pytest.fixture(scope="module")
def hf_smollm():
  from transformers import AutoModelForCausalLM
  path = sio.default_model_path()
  return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(default_target):
  tok = default_target.tokenizer
  ids = [tok.encode(tok.render_chat(c, add_generation_prompt=True)) for c in CHATS]
  lens = [len(i) for i in ids]
  assert len(set(lens)) == len(lens), lens           # all different lengths
  assert max(lens) > 64 and min(lens) < 64, lens     # two padding buckets
  return ids


def hf_greedy(hf_model, ids, eos_ids):
  with torch.no_grad():
    out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=list(eos_ids),
                            pad_token_id=eos_ids[0])
  return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def singles(default_target, prompt_ids):
  """Each prompt alone (greedy)."""
  return [generate(default_target, [ids], max_new_tokens=MAX_NEW) for ids in prompt_ids]


def test_greedy_matches_transformers(default_target, hf_smollm, prompt_ids, singles):
  eos = default_target.tokenizer.eos_ids
  assert eos == [2]     # <|im_end|>
  stopped_at_eos = 0
  for ids, g in zip(prompt_ids, singles):
    ref = hf_greedy(hf_smollm, ids, eos)
    ours = g.token_ids[0]
    assert ours == ref, (default_target.tokenizer.decode(ours), default_target.tokenizer.decode(ref))
    assert g.new_tokens[0] == len(ours)
    assert g.texts[0] == default_target.tokenizer.decode(ours)
    if ours[-1] in eos:
      stopped_at_eos += 1
      assert len(ours) <= MAX_NEW and eos[0] not in ours[:-1]
    else:
      assert len(ours) == MAX_NEW
  # at least one answer ends early at <|im_end|> (the France prompt answers in one sentence)
  assert stopped_at_eos >= 1
  assert "Paris" in singles[0].texts[0]


def test_batch_equals_single(default_target, prompt_ids, singles):
  batch = generate(default_target, prompt_ids, max_new_tokens=MAX_NEW)
  assert len(batch.token_ids) == len(prompt_ids)
  for i, g in enumerate(singles):
    assert batch.token_ids[i] == g.token_ids[0], f"row {i}"
    assert batch.texts[i] == g.texts[0]
    assert batch.new_tokens[i] == g.new_tokens[0]
  # rows really differ (not one row copied to all)
  assert len({tuple(t) for t in batch.token_ids}) == len(prompt_ids)


def test_string_prompt_uses_chat_template(default_target, prompt_ids, singles):
  """generate("text") with chat=True renders the same ids the other tests feed in."""
  g = generate(default_target, CHATS[0][0]["content"], max_new_tokens=MAX_NEW)
  assert g.token_ids[0] == singles[0].token_ids[0]


SAMPLE = dict(temperature=0.8, top_p=0.9, max_new_tokens=MAX_NEW)


def test_sampling_seed_reproducible(default_target, prompt_ids):
  ids = [prompt_ids[1]]
  a = generate(default_target, ids, seed=1234, **SAMPLE)
  b = generate(default_target, ids, seed=1234, **SAMPLE)
  assert a.token_ids == b.token_ids and a.texts == b.texts
  others = [generate(default_target, ids, seed=s, **SAMPLE).token_ids[0] for s in (1, 2)]
  assert all(o != a.token_ids[0] for o in others), "different seeds gave identical samples"
  assert others[0] != others[1]
  for t in [a.token_ids[0]] + others:
    assert 1 <= len(t) <= MAX_NEW and all(0 <= x < default_target.cfg.vocab for x in t)


def test_top_k_1_sampling_is_greedy(default_target, prompt_ids, singles):
  g = generate(default_target, [prompt_ids[1]], seed=7, temperature=0.8, top_k=1, max_new_tokens=MAX_NEW)
  assert g.token_ids[0] == singles[1].token_ids[0]
