"""`--peers llamacpp`: the worker-process runner (a crashing peer is an error row, the bench goes on), the
clear error when llama-cpp-python is missing, and the float32 copy of a GGUF. None of these needs
llama-cpp-python: the workers here are a fake speaking the same protocol; the last test runs the real one
where it is installed."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from specjax import cli
from specjax.bench import llamacpp, run_bench
from test_errors import write_gguf

# A stand-in for llamacpp_worker.py: answers each prompt with its last token repeated; the worker of the
# native file dies by SIGILL at its first request (the warm-up), the native prompt-lookup one by SIGSEGV at
# its fourth (after the warm-up and two prompts), as a llama.cpp build with instructions this CPU lacks would.
FAKE_WORKER = """
import json, os, signal, sys
job = json.loads(sys.argv[1])
native = not job["model"].endswith(".f32.gguf")
crash_at = (4 if job["lookup"] else 1) if native and os.environ.get("FAKE_CRASH") else None
print("llama.cpp says hello on stderr", file=sys.stderr)
print(json.dumps({"ready": True, "info": {"fake": True}}), flush=True)
for i, line in enumerate(sys.stdin, 1):
  if i == crash_at:
    os.kill(os.getpid(), signal.SIGSEGV if job["lookup"] else signal.SIGILL)
  req = json.loads(line)
  new = req["ids"][-1:] * req["max_new_tokens"]
  print(json.dumps({"token_ids": new, "new_tokens": len(new), "target_forwards": len(new), "wall_s": 0.01}), flush=True)
"""


@pytest.fixture
def tiny_gguf(tmp_path):
  return write_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def letters_prompts(tmp_path):
  """Prompts in the tiny GGUF's byte-level vocabulary (a..m), two categories."""
  rows = [{"question_id": i, "category": c, "turns": ["abcabcab"[i % 3:] + "fgh" * (i + 1)]}
          for i, c in enumerate(["qa", "qa", "math_reasoning"])]
  p = tmp_path / "dev.jsonl"
  p.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return p


def test_crashing_peer_is_an_error_row_and_the_bench_goes_on(tiny_gguf, letters_prompts, tmp_path, monkeypatch,
                                                              capsys):
  fake = tmp_path / "fake_worker.py"
  fake.write_text(FAKE_WORKER)
  monkeypatch.setattr(llamacpp, "WORKER", [sys.executable, str(fake)])
  monkeypatch.setattr(llamacpp, "require", lambda: None)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("FAKE_CRASH", "1")
  out = tmp_path / "out"
  kw = dict(out=out, drafters=[], model=str(tiny_gguf), peers=["llamacpp"], max_new_tokens=4, chat=False,
            progress=False)
  res = run_bench(letters_prompts, **kw)

  errs = res["errors"]
  assert set(errs) == {"llamacpp_native", "llamacpp_native_pld"}
  assert "killed by SIGILL" in errs["llamacpp_native"] and "hello on stderr" in errs["llamacpp_native"]
  assert "killed by SIGSEGV" in errs["llamacpp_native_pld"]
  assert "going on without llamacpp_native" in capsys.readouterr().err
  counts = {m: res["results"][m]["overall"]["prompts"] for m in res["methods"]}
  # The F32 peers and the baseline ran every prompt; the native prompt-lookup peer kept its 2 answers.
  assert counts == {"none": 3, "llamacpp": 3, "llamacpp_pld": 3, "llamacpp_native": 0, "llamacpp_native_pld": 2}
  assert list((tmp_path / "cache" / "specjax" / "llamacpp").glob("tiny.*.f32.gguf"))
  md = (out / "results.md").read_text()
  assert "## Errors" in md and "| llamacpp_native (error) |" in md and "| llamacpp |" in md

  # Errors are not records: the same command on a working build measures what is missing, and only that.
  monkeypatch.delenv("FAKE_CRASH")
  res = run_bench(letters_prompts, **kw)
  assert res["errors"] == {}
  assert all(res["results"][m]["overall"]["prompts"] == 3 for m in res["methods"])
  assert len((out / "records.jsonl").read_text().splitlines()) == 15


def test_missing_llama_cpp_names_the_extra_before_loading(tmp_path, letters_prompts, monkeypatch, capsys):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
  # The model path does not exist: were the package checked after loading, this would be the error.
  with pytest.raises(SystemExit) as e:
    cli.main(["bench", "--prompts", str(letters_prompts), "--model", str(tmp_path / "missing.gguf"),
              "--drafters", "none", "--peers", "hf,llamacpp", "--no-progress", "--out", str(tmp_path / "o")])
  assert e.value.code != 0
  err = capsys.readouterr().err
  assert "llama-cpp-python" in err and "specjax[bench]" in err and "CMAKE_ARGS=-DGGML_NATIVE=OFF" in err
  assert "missing.gguf" not in err
  assert not (tmp_path / "o").exists()


def test_llamacpp_peer_needs_a_gguf(tmp_path, letters_prompts, monkeypatch):
  from specjax.testing import tiny_target
  monkeypatch.setattr(llamacpp, "require", lambda: None)
  with pytest.raises(ValueError, match="needs the model as a .gguf file"):
    run_bench(letters_prompts, out=tmp_path / "o", drafters=[], target=tiny_target(), peers=["llamacpp"],
              max_new_tokens=2, chat=False, progress=False)


def test_f32_copy_round_trips(tmp_path):
  import gguf
  from gguf.quants import quantize

  import specjax.io as sio
  from test_errors import _gguf_tensors

  t = _gguf_tensors(np.random.default_rng(0))
  q = quantize(t["blk.0.ffn_down.weight"], gguf.GGMLQuantizationType.Q8_0)
  src = write_gguf(tmp_path / "q8.gguf", raw={"blk.0.ffn_down.weight": (gguf.GGMLQuantizationType.Q8_0, q)})
  dst = llamacpp.f32_copy(src, tmp_path / "cache")
  assert dst.parent == tmp_path / "cache" and dst.name.endswith(".f32.gguf")

  a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(dst))
  assert {x.tensor_type.name for x in a.tensors} == {"F32", "Q8_0"}
  assert {x.tensor_type.name for x in b.tensors} == {"F32"}
  for x, y in zip(a.tensors, b.tensors, strict=True):
    assert x.name == y.name and list(x.shape) == list(y.shape)
    np.testing.assert_array_equal(gguf.quants.dequantize(x.data, x.tensor_type), y.data)
  fields = lambda r: {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
  assert fields(a) == fields(b)

  ta, tb = sio.load(src), sio.load(dst)                   # our own loader reads the copy as the original
  assert ta.cfg == tb.cfg and ta.fingerprint == tb.fingerprint
  assert ta.tokenizer.encode("abcab") == tb.tokenizer.encode("abcab")

  before = dst.stat().st_mtime_ns
  assert llamacpp.f32_copy(src, tmp_path / "cache") == dst and dst.stat().st_mtime_ns == before   # reused


def test_real_llamacpp_peer_matches_on_float32(tiny_gguf, letters_prompts, tmp_path, monkeypatch):
  """With llama-cpp-python installed: the real workers on a tiny float32 GGUF give our greedy tokens."""
  pytest.importorskip("llama_cpp")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  res = run_bench(letters_prompts, out=tmp_path / "out", drafters=[], model=str(tiny_gguf), peers=["llamacpp"],
                  max_new_tokens=8, chat=False, progress=False)
  assert res["errors"] == {}
  assert res["machine"]["llamacpp"]["llama_cpp"]
  for m in ("llamacpp", "llamacpp_pld"):
    ident = res["results"][m]["overall"]["identical_to_baseline"]
    assert ident["total"] == 3 and ident["identical"] + ident["near_tie"] >= 2, (m, ident)
  plain = [r for r in res["records"] if r["method"] == "llamacpp"]
  assert all(r["target_forwards"] == r["new_tokens"] for r in plain)      # one forward per token


def test_real_prompt_lookup_worker_past_512_tokens(tiny_gguf):
  """llama-cpp-python sizes its logits buffer by n_batch (512) unless logits_all is passed: a longer prompt
  under prompt lookup failed (ValueError: could not broadcast ... into shape (0,)) before the worker passed it."""
  pytest.importorskip("llama_cpp")
  from specjax.bench.peers import WorkerPeer
  job = {"model": str(tiny_gguf), "n_ctx": 1024, "lookup": [4, 3], "temperature": 0.0, "seed": 0, "eos_ids": []}
  w = WorkerPeer("llamacpp_pld", llamacpp.WORKER, job)
  try:
    r = w.run([2 + i % 13 for i in range(700)], 5)
  finally:
    w.close()
  assert r["new_tokens"] == 5 and 1 <= r["target_forwards"] <= 5
