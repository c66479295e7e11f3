"""Run by test_train_parallel.py in its own process with 8 fake CPU devices (XLA_FLAGS is read when JAX
starts). Prints one JSON object of measurements the tests assert on:

- "step": one training step on a mesh against the one-device step on the same global batch (largest
  differences of the loss and of the updated weights), for Medusa from stored features and for EAGLE-3
  with its features computed on the fly (against the one-device step on stored features);
- "resume": a Medusa run checkpointed on (data=8) and resumed on (data=2, model=4) against the same run
  uninterrupted on one device;
- "byo": a tiny random Hugging Face Llama directory (not SmolLM2's shape) taken end to end on each mesh:
  prompts -> the target's answers -> features -> a trained Medusa checkpoint -> decoding with it.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

import specjax
from specjax import api
from specjax.io import checkpoint
from specjax.testing import tiny_target
from specjax.train import data as data_lib
from specjax.train import loop, train_drafter
from specjax.train.placement import placement

MESHES = {"data=8": dict(data=8), "data=4,model=2": dict(data=4, model=2), "model=2": dict(model=2)}


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def two_steps(t, train, held, c, mesh):
  """(losses, params after, shardings of the params and of the batch) of the first two steps of a run on
  `mesh` (None: one device). Two: the schedule's learning rate is 0 at step 0, which moves only Adam's moments."""
  recipe = loop.RECIPES[c.drafter](t, train, held, c)
  opt = loop.optimizer(c)
  place = placement(mesh, t.cfg)
  params, opt_state, consts, tparams = loop.initial_state(recipe, opt, place)
  fn, put = loop.step_function(recipe, opt, place, params, opt_state, tparams)
  losses = []
  for step in range(2):
    batch = put(recipe.batch(loop.batch_indices(recipe.units, step, c.batch, c.seed), step))
    params, opt_state, loss, _ = fn(params, opt_state, batch, consts, tparams)
    losses.append(float(loss))
  if mesh is None:
    return losses, jax.device_get(params), [], []
  return (losses, jax.device_get(params), sorted({str(x.sharding.spec) for x in jax.tree.leaves(params)}),
          sorted({str(x.sharding.spec) for x in jax.tree.leaves(batch)}))


def run_steps(root: pathlib.Path) -> dict:
  t0 = time.perf_counter()
  t = tiny_target(seed=3, scale=6.0, eos_id=999)
  rng = np.random.default_rng(0)
  # Any token sequences do here (the equalities hold whatever the text): no generation needed.
  seqs = [{"id": str(i), "prompt": rng.integers(2, 64, rng.integers(3, 12)).tolist(),
           "answer": rng.integers(2, 64, rng.integers(20, 40)).tolist()} for i in range(24)]
  out = {}
  c3 = loop.TrainConfig(drafter="eagle3", steps=2, batch=8, heads=2, draft_vocab=32, warmup=1, lr=1e-2).resolved()
  full = dict(full=True, capture=loop.RECIPES["eagle3"].capture_for(t.cfg, c3), progress=False)
  train = data_lib.features(t, seqs[:20], root / "train", **full)
  held = data_lib.features(t, seqs[20:], root / "held", **full)
  online = data_lib.features(t, seqs[:20], None, states=False, **full)
  data8 = specjax.make_mesh(data=8)
  cm = loop.TrainConfig(drafter="medusa", steps=6, batch=64, heads=2, draft_vocab=32, eval_positions=128, nodes=6,
                        warmup=1, save_every=3, eval_every=6, lr=1e-2).resolved()
  for name, c, tr in (("medusa", cm, train), ("eagle3-online", c3, online)):
    base_loss, base_p, _, _ = two_steps(t, train, held, c, None)
    loss, p, specs, bspec = two_steps(t, tr, held, c, data8)
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(base_p))
    init = jax.device_get(loop.RECIPES[c.drafter](t, train, held, c).init())
    out[name] = {"loss": [base_loss, loss], "weights_diff": max_diff(base_p, p), "weights_scale": scale,
                 "moved": max_diff(base_p, init),
                 "param_specs": specs, "batch_spec": bspec}
  # Resume on another mesh shape: (data=8) for 3 steps, then (data=2, model=4) to the end.
  quiet = dict(progress=False, log=lambda m: None)
  whole, _ = loop.fit(t, train, held, cm, root / "whole", **quiet)
  loop.fit(t, train, held, cm, root / "split", mesh=data8, stop_after=3, **quiet)
  resumed, _ = loop.fit(t, train, held, cm, root / "split", mesh=specjax.make_mesh(data=2, model=4), **quiet)
  w = lambda d: [np.asarray(d.params[k][...]) for k in ("w", "b")]
  out["resume"] = {"weights_diff": max_diff(w(whole), w(resumed)), "weights_scale": max_diff(w(whole), [0 * x for x in w(whole)])}
  out["seconds"] = time.perf_counter() - t0
  return out


CHAT = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def write_hf_llama(d: pathlib.Path) -> pathlib.Path:
  """A random Llama directory as Hugging Face writes one (config.json, model.safetensors, tokenizer.json):
  vocabulary 96, hidden 48, 3 layers, 6 query and 2 KV heads, FFN 96, untied head; word-level tokenizer
  "w0".."w95" (eos w1) with a chat template."""
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  V, H, L, N, K, F = 96, 48, 3, 6, 2, 96
  D = H // N
  d.mkdir(parents=True, exist_ok=True)
  (d / "config.json").write_text(json.dumps(dict(
      model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=V, hidden_size=H, intermediate_size=F,
      num_hidden_layers=L, num_attention_heads=N, num_key_value_heads=K, max_position_embeddings=256,
      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)))
  rng = np.random.default_rng(7)
  shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
  for i in range(L):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (N * D, H), p + "self_attn.k_proj.weight": (K * D, H),
                   p + "self_attn.v_proj.weight": (K * D, H), p + "self_attn.o_proj.weight": (H, N * D),
                   p + "mlp.gate_proj.weight": (F, H), p + "mlp.up_proj.weight": (F, H), p + "mlp.down_proj.weight": (H, F),
                   p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)})
  save_file({k: (np.ones(s) if k.endswith("norm.weight") else 0.5 * rng.standard_normal(s)).astype(np.float32)
             for k, s in shapes.items()}, str(d / "model.safetensors"))
  tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(V)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w0", "eos_token": "w1", "chat_template": CHAT}))
  return d


def run_byo(root: pathlib.Path) -> dict:
  model_dir = write_hf_llama(root / "my-llama")
  rng = np.random.default_rng(1)
  prompts = root / "prompts.jsonl"        # the user's prompt mix: 1 in 40 rows held out by a hash of its id
  prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": " ".join(f"w{x}" for x in rng.integers(2, 96, 6))})
                             + "\n" for i in range(400)))
  t0 = time.perf_counter()
  check = ["w5 w17 w33 w2", "w40 w41 w42", "w9 w9 w70 w3 w11"]
  out = {}
  for name, kw in MESHES.items():
    os.environ["SPECJAX_CACHE"] = str(root / f"cache-{name}")     # answers and features made afresh on each mesh
    target = specjax.load(model_dir, mesh=specjax.make_mesh(**kw))
    d, summary = train_drafter(target, drafter="medusa", out=root / f"drafter-{name}", prompts_dir=prompts,
                               max_prompts=16, heldout_prompts=8, answer_tokens=16, gen_batch=8, steps=4, batch=32,
                               heads=2, nodes=6, eval_every=4, save_every=4, eval_positions=64, progress=False,
                               log=lambda m: None)
    path = root / f"drafter-{name}" / "medusa.safetensors"
    _, meta = checkpoint.load(path)
    plain = api.generate(target, check, max_new_tokens=12).token_ids
    spec = api.generate(target, check, max_new_tokens=12, drafter=f"medusa:{path}")
    out[name] = {"same": spec.token_ids == plain, "fingerprint": meta["target"].get("fingerprint") == target.fingerprint,
                 "positions": meta["training"]["train_positions"], "steps": summary["steps_done"],
                 "forwards": [sum(spec.target_forwards), sum(spec.new_tokens)], "drafter": spec.drafter,
                 "embed_spec": str(target.model.embed[...].sharding.spec), "seconds": time.perf_counter() - t0}
    if name == "data=4,model=2":       # features on the fly, end to end: nothing of them written
      listing = lambda: {str(p) for p in (root / f"cache-{name}").rglob("*")}
      before = listing()
      d, summary = train_drafter(target, drafter="eagle", out=root / "eagle-online", prompts_dir=prompts,
                                 features="online", max_prompts=16, heldout_prompts=8, answer_tokens=16, gen_batch=8,
                                 steps=2, batch=8, eval_positions=64, progress=False, log=lambda m: None)
      spec = api.generate(target, check, max_new_tokens=12, drafter=d)
      out["online"] = {"same": spec.token_ids == plain, "steps": summary["steps_done"],
                       "written": sorted(pathlib.Path(p).name for p in listing() - before), "drafter": spec.drafter,
                       "seconds": time.perf_counter() - t0}
  return out


if __name__ == "__main__":
  assert len(jax.devices()) == 8, jax.devices()
  with tempfile.TemporaryDirectory() as tmp:
    res = {"steps": run_steps(pathlib.Path(tmp) / "steps"), "byo": run_byo(pathlib.Path(tmp) / "byo")}
  print(json.dumps(res))
  sys.stdout.flush()
