"""Run by test_parallel.py in its own process with 8 fake CPU devices (XLA_FLAGS is read when JAX starts,
and the pytest process has started it with one). Prints one JSON object: for each mesh and drafter,
whether the sharded greedy outputs equal the one-device outputs, and the shardings observed."""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import specjax
from specjax import api
from specjax.process_cache import CACHE
from specjax.drafters.cerberus import Cerberus
from specjax.drafters.adadecode import AdaDecode
from specjax.drafters.clover import Clover2
from specjax.drafters.draft_model import DraftModel, SelfSpec, Staged
from specjax.drafters.eagle import Eagle, Eagle3
from specjax.drafters.hidden_transfer import HiddenTransfer
from specjax.drafters.medusa import Medusa
from specjax.drafters.parallelspec import ParallelSpec
from specjax.models.llama import Llama, _random_weights, weight_shapes
from specjax.program import sharded
from specjax.testing import tiny_target

MESHES = {"data=8": dict(data=8), "data=2,model=4": dict(data=2, model=4), "model=2": dict(model=2)}


def spec_of(x) -> list:
  return [a for a in x.sharding.spec] + [None] * (x.ndim - len(x.sharding.spec))


def observed(model, mesh) -> dict:
  """Shardings of the weights as placed, and of the last compiled program's inputs and outputs."""
  compiled = next(reversed(CACHE.executables.values()))
  outs = compiled.output_shardings
  ins = compiled.input_shardings[0]
  return {"wqkv": spec_of(model.wqkv[0][...]), "wo": spec_of(model.wo[0][...]),
          "w_gate_up": spec_of(model.w_gate_up[0][...]), "w_down": spec_of(model.w_down[0][...]),
          "embed": spec_of(model.embed[...]), "devices": len(model.w_gate_up[0][...].sharding.device_set),
          "prompt_in": list(ins[2].spec), "tokens_out": list(outs.tokens.spec),
          "mesh": dict(mesh.shape)}


def run_tiny():
  t = tiny_target(seed=0, scale=10.0)
  prompts = [[3, 4, 5, 3, 4, 5, 6], [7, 8, 9, 10, 7, 8], [11, 3, 11, 3]]       # 3 rows: padded on data=2, 8
  drafters = {"none": "none", "pld": "pld", "lookahead": "lookahead", "medusa": Medusa.untrained(t, seed=4, nodes=6),
              "clover2": Clover2.untrained(t, seed=4), "eagle": Eagle.untrained(t, seed=4),
              "eagle3": Eagle3.untrained(t, seed=4, draft_vocab=32), "self-spec": SelfSpec(exit_layer=1, gamma=2),
              "staged": Staged(exit_layer=1, gamma=2, lookup=2),
              "draft-model": DraftModel.from_target(tiny_target(seed=2, scale=10.0), gamma=2),
              "parallelspec": ParallelSpec.untrained(t, seed=4, draft_vocab=32),
              "cerberus": Cerberus.untrained(t, seed=4, nodes=6, gate_bias=0.0),       # the gate stops about half the rows
              "hidden-transfer": HiddenTransfer.untrained(t, seed=4, transfer_layer=1, nodes=5),
              "adadecode": AdaDecode.untrained(t, seed=4, exit_layer=1, gamma=2, threshold=0.1)}
  only_on = {n: "data=2,model=4" for n in ("self-spec", "staged", "draft-model", "parallelspec", "cerberus",
                                           "hidden-transfer", "adadecode")}  # test time
  base = {n: api.generate(t, prompts, max_new_tokens=12, chat=False, drafter=d).token_ids for n, d in drafters.items()}
  out = {}
  for name, kw in MESHES.items():
    mesh = specjax.make_mesh(**kw)
    w = {k: v * (1 if k.endswith("norm") else 10.0) for k, v in _random_weights(weight_shapes(t.cfg), 0).items()}
    model = Llama(t.cfg, w, shardings=sharded.weight_shardings(mesh, t.cfg))
    placed = specjax.Target(model, t.tokenizer, t.cfg, "tiny", mesh)
    same = {n: api.generate(placed, prompts, max_new_tokens=12, chat=False, drafter=d).token_ids == base[n]
            for n, d in drafters.items() if only_on.get(n, name) == name}
    lay = sharded.layout(mesh, t.cfg)
    state = jax.jit(lambda: sharded.state_placement(lay, Clover2)(      # declared drafter-state entries
        {"k": jnp.zeros((1, 8, 16, 2, 8)), "u": jnp.zeros((8, 32)), "w": jnp.zeros((32, 64))}))()
    out[name] = {"same": same, "shardings": observed(model, mesh), "state": {k: spec_of(v) for k, v in state.items()}}
  return out


def run_default():
  t = specjax.load("default")
  prompts = ["What is 2+2?", "Name a colour."]
  base = api.generate(t, prompts, max_new_tokens=8).token_ids
  out = {}
  for name, kw in MESHES.items():
    mesh = specjax.make_mesh(**kw)
    placed = specjax.load("default", mesh=mesh)          # placed shard by shard while loading
    got = api.generate(placed, prompts, max_new_tokens=8).token_ids
    out[name] = {"same": {"none": got == base}, "shardings": observed(placed.model, mesh)}
  return out


if __name__ == "__main__":
  assert len(jax.devices()) == 8, jax.devices()
  print(json.dumps({"tiny": run_tiny, "default": run_default}[sys.argv[1]]()))
