"""Sharded decoding on a mesh of 8 fake CPU devices (tests/parallel_worker.py runs in its own process:
XLA_FLAGS takes effect only when JAX starts). Greedy outputs must equal the one-device outputs token for
token, for the baseline and every drafter, and the weights and program inputs/outputs must be sharded as
the partition rules declare."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import types

import jax.numpy as jnp
import pytest

from specjax.models.llama import LAYER_WEIGHTS, weight_info
from specjax.parallel import make_mesh, parse_mesh
from specjax.program import sharded
from specjax.testing import tiny_config, tiny_target
from test_cli import tiny_chat, use_tiny  # noqa: F401 (fixtures)

HERE = pathlib.Path(__file__).resolve().parent


def worker(mode: str) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             SPECJAX_COMPILATION_CACHE="0", PYTHONPATH=str(HERE.parent))     # this checkout's specjax
  p = subprocess.run([sys.executable, str(HERE / "parallel_worker.py"), mode], env=env, capture_output=True,
                     text=True, timeout=1200)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


def check_shardings(s: dict, heads_split: bool):
  # layer 0's arrays (the model holds each layer's weights apart: no layer axis)
  assert s["w_gate_up"] == [None, None, "model"] and s["w_down"] == ["model", None]
  assert s["embed"] == ["model", None]
  # q/k/v split by KV-head group only where the model axis divides the KV heads; else replicated
  assert s["wqkv"] == [None, "model" if heads_split else None, None, None]
  assert s["wo"] == ["model" if heads_split else None, None]
  assert s["prompt_in"] == ["data", None] and s["tokens_out"] == ["data", None]
  assert s["devices"] == s["mesh"]["data"] * s["mesh"]["model"]


def test_tiny_model_every_drafter_on_three_meshes():
  res = worker("tiny")                               # tiny: 4 query heads, 2 KV heads
  assert set(res) == {"data=8", "data=2,model=4", "model=2"}
  for mesh, r in res.items():
    assert r["same"] == {"none": True, "pld": True, "lookahead": True, "medusa": True, "clover2": True, "eagle": True,
                         "eagle3": True, **({"self-spec": True, "staged": True, "draft-model": True, "parallelspec": True,
                                                "cerberus": True, "hidden-transfer": True, "adadecode": True}
                                            if mesh == "data=2,model=4" else {})}, mesh
  check_shardings(res["data=8"]["shardings"], heads_split=True)
  check_shardings(res["model=2"]["shardings"], heads_split=True)
  check_shardings(res["data=2,model=4"]["shardings"], heads_split=False)     # 2 KV heads on 4: replicated
  assert res["data=8"]["state"] == {"k": [None, "data", None, None, None], "u": ["data", None], "w": [None, None]}


def test_default_model_baseline_on_three_meshes():
  res = worker("default")                            # SmolLM2: 9 query, 3 KV heads: replicated on model=2, 4
  for mesh, r in res.items():
    assert r["same"] == {"none": True}, mesh
  check_shardings(res["data=8"]["shardings"], heads_split=True)
  check_shardings(res["model=2"]["shardings"], heads_split=False)
  check_shardings(res["data=2,model=4"]["shardings"], heads_split=False)


def test_every_weight_is_held_as_declared():
  t = tiny_target(dtype=jnp.bfloat16, qkv_bias=True)
  info = weight_info(t.cfg, jnp.bfloat16)
  assert {"bqkv", "lm_head"} <= set(info) and info["attn_norm"].dtype == jnp.float32
  for name, i in info.items():
    held = getattr(t.model, name)
    layered = i.axes[0] == "layers"
    assert layered == (name in LAYER_WEIGHTS), name
    for a in ([p[...] for p in held] if layered else [held[...]]):
      assert (a.shape, a.dtype) == (i.shape[layered:], i.dtype), name


def test_an_axis_is_split_only_where_the_mesh_divides_every_dimension_declared_with_it():
  mesh = types.SimpleNamespace(shape={"data": 2, "model": 2})      # the layout reads only the axis sizes
  assert sharded.layout(mesh, tiny_config()).split == {"batch", "vocab", "kv_heads", "ffn"}
  # SmolLM2's 9 query heads over 3 KV heads: wo's 9*8 rows divide by 2, its KV-head groups do not
  odd = tiny_config(heads=9, kv_heads=3, hidden=72)
  assert sharded.layout(mesh, odd).split == {"batch", "vocab", "ffn"}
  assert sharded.layout(types.SimpleNamespace(shape={"data": 1, "model": 3}), odd).split == {"batch", "kv_heads"}


def test_mesh_arguments_are_checked():
  assert parse_mesh("data=2,model=4") == {"data": 2, "model": 4} and parse_mesh("model=2") == {"model": 2}
  for bad in ("data=2,data=2", "dp=2", "data=0", "data=x", "data"):
    with pytest.raises(ValueError, match="--mesh"):
      parse_mesh(bad)
  with pytest.raises(ValueError, match="needs 64 devices"):
    make_mesh(data=8, model=8)
  with pytest.raises(ValueError, match="positive integer"):
    make_mesh(data=0)


def test_two_processes_joined_by_jax_distributed_match_one_process():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", SPECJAX_COMPILATION_CACHE="0", PYTHONPATH=str(HERE.parent))
  procs = [subprocess.Popen([sys.executable, str(HERE / "multihost_worker.py"), f"localhost:{port}", "2", str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  res = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
  assert sorted(r["process"] for r in res) == [0, 1]
  for r in res:
    assert r["devices"] == 4 and r["local"] == 2 and r["processes_in_mesh"] == 2
    assert r["sharded"] == r["single"] and len(r["sharded"]) == 3
  assert res[0]["sharded"] == res[1]["sharded"]


def test_cli_mesh_and_host_flags_checked_before_loading(capsys, use_tiny):
  from specjax import cli
  for argv, message in ((["--mesh", "dp=2"], "--mesh 'dp=2'"), (["--process-id", "1"], "need --coordinator"),
                        (["--coordinator", "localhost:1234"], "needs --num-processes")):
    with pytest.raises(SystemExit) as e:
      cli.main(["generate", *argv, "hi"])
    assert e.value.code == 2 and message in capsys.readouterr().err
  assert use_tiny == []
