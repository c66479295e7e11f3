"""Drafter checkpoints (issue 23): every header field checked before use, one line "... is corrupted: ..."
for a bad one; the sha256 covers the header's tensors table and metadata as well as the tensor bytes; the
shipped checkpoints are version 2, bfloat16, and load."""
from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from specjax.drafters import registry
from specjax.drafters.medusa import Medusa
from specjax.io import checkpoint
from specjax.testing import tiny_target


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  t = tiny_target(seed=1, scale=8.0)
  d = Medusa.untrained(t, seed=2, draft_vocab=16, nodes=5)
  path = checkpoint.save_drafter(tmp_path_factory.mktemp("ckpt") / "m.safetensors", d, t,
                                 {"eval": {"tau_by_nodes": {"5": 1.5}}})
  tensors, full = checkpoint.load(path)
  return path, tensors, full


def _split(raw: bytes) -> tuple[dict, bytes]:
  n = struct.unpack("<Q", raw[:8])[0]
  return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header: dict, data: bytes) -> bytes:
  head = json.dumps(header).encode()
  return struct.pack("<Q", len(head)) + head + data


def _edited(tmp_path, raw: bytes, edit) -> str:
  """A copy of the checkpoint whose header `edit(header)` changed in place (its sha256 left as it was)."""
  header, data = _split(raw)
  edit(header)
  p = tmp_path / "edited.safetensors"
  p.write_bytes(_join(header, data))
  return str(p)


def _refused(path, match: str):
  with pytest.raises(checkpoint.CheckpointError, match=match) as e:
    registry.make(f"medusa:{path}")
  assert "\n" not in str(e.value)


def test_round_trip_and_bad_header_fields(saved, tmp_path):
  path, tensors, _ = saved
  got, _ = checkpoint.load(path)
  assert np.array_equal(got["vocab"], tensors["vocab"])
  raw = path.read_bytes()
  etype = tmp_path / "etype.safetensors"
  etype.write_bytes(raw.replace(b'"dtype"', b'"etype"', 1))              # one header byte changed
  _refused(etype, "is corrupted: tensor 'b' has dtype None")
  set_ = lambda k, v: lambda h: h["w"].__setitem__(k, v)
  _refused(_edited(tmp_path, raw, set_("dtype", "F16")), "corrupted: tensor 'w' has dtype 'F16'; expected one of BF16")
  _refused(_edited(tmp_path, raw, lambda h: h["w"].pop("data_offsets")), "corrupted: tensor 'w' has data_offsets None")
  _refused(_edited(tmp_path, raw, set_("shape", [2, -1])), "corrupted: tensor 'w' has shape")
  _refused(_edited(tmp_path, raw, set_("shape", [1, 1])), "corrupted: tensor 'w' spans")
  _refused(_edited(tmp_path, raw, lambda h: h.__setitem__("w", [])), "not a {dtype, shape, data_offsets} entry")
  far = lambda h: h["vocab"].__setitem__("data_offsets", [10 ** 9, 10 ** 9 + 64])
  _refused(_edited(tmp_path, raw, far), "truncated or corrupted")


def test_the_hash_covers_the_header(saved, tmp_path):
  path, _, _ = saved
  raw = path.read_bytes()
  header, _ = _split(raw)
  # vocab pointed at other bytes of the same size: every field is well formed, only the hash can tell.
  w0 = header["w"]["data_offsets"][0]
  _refused(_edited(tmp_path, raw, lambda h: h["vocab"].__setitem__("data_offsets", [w0, w0 + 64])), "sha256")

  def meta(key, f):
    def edit(h):
      m = json.loads(h["__metadata__"][key])
      f(m)
      h["__metadata__"][key] = json.dumps(m)
    return edit
  _refused(_edited(tmp_path, raw, meta("drafter", lambda m: m["config"].__setitem__("nodes", 64))), "sha256")
  _refused(_edited(tmp_path, raw, meta("drafter", lambda m: m["config"]["accuracy"].append(0.99))), "sha256")
  _refused(_edited(tmp_path, raw, meta("training", lambda m: m["eval"]["tau_by_nodes"].__setitem__("5", 9.0))), "sha256")
  _refused(_edited(tmp_path, raw, lambda h: h["__metadata__"].__setitem__("version", "1")), "older specjax")


def test_draft_vocabulary_ids_inside_the_vocabulary(saved, tmp_path):
  _, tensors, meta = saved
  bad = dict(tensors, vocab=np.array([0] * 15 + [64], np.int32))           # the tiny target has 64 tokens
  p = checkpoint.save(tmp_path / "v.safetensors", bad, meta)
  _refused(p, r"draft vocabulary holds ids outside \[0, 64\)")
  p = checkpoint.save(tmp_path / "n.safetensors", dict(tensors, vocab=np.full(16, -3, np.int32)), meta)
  _refused(p, "outside")


def test_version_1_refused_and_upgraded(saved, tmp_path):
  path, _, _ = saved
  header, data = _split(path.read_bytes())
  meta = header["__metadata__"]
  meta.pop("version")
  meta["sha256"] = hashlib.sha256(data).hexdigest()                       # what version 1 recorded
  old = tmp_path / "old.safetensors"
  old.write_bytes(_join(header, data))
  _refused(old, "older specjax")
  checkpoint.upgrade(old)
  assert _split(old.read_bytes())[1] == data                              # tensor bytes unchanged
  registry.make(f"medusa:{old}")
  meta["sha256"] = "0" * 64
  old.write_bytes(_join(header, data))
  with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
    checkpoint.upgrade(old)


@pytest.mark.parametrize("name", ["medusa", "clover2", "eagle", "eagle3", "early-exit", "adadecode", "hidden-transfer"])
def test_shipped_checkpoints_are_version_2_and_load(name):
  path = registry.checkpoints_dir() / f"{name}.safetensors"
  tensors, info = checkpoint.load(path)
  header, data = _split(path.read_bytes())
  assert header["__metadata__"]["version"] == checkpoint.VERSION and info["drafter"]["name"] == name
  assert {str(v.dtype) for k, v in tensors.items() if k != "vocab"} == {"bfloat16"}
  end = max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")
  n = struct.unpack("<Q", path.read_bytes()[:8])[0]
  assert len(data) == end and path.stat().st_size == 8 + n + end          # nothing but header and tensors
