"""Training data for drafters: prompts, the target's own answers (self-distillation), target features.

Three stages, each cached on disk outside git and keyed by the target's fingerprint and the settings,
each resumable (a killed run continues where it stopped, nothing is done twice):

1. `training_prompts`: by default the prompt mix shipped with specjax (specjax/data/mix.jsonl.gz, built
   by specjax.train.mix: every Spec-Bench task type, no Spec-Bench prompt); or a train-prompts
   directory (GSM8K train, GPTeacher, self-instruct); or a user's own JSONL / JSON file. One list
   interleaved across sources or task types, with a held-out split chosen by a hash of the record id
   (never Spec-Bench, which is for benchmarks only).
2. `distill`: the target's greedy answers to those prompts, generated in batches by the compiled
   generator (what Medusa-2, EAGLE and Clover-2 train on: the drafter learns the target's own
   outputs). Answers stored in the repository (data/answers/<fingerprint>/, specjax.train.store)
   are taken first; only the rest is generated. The cheaper alternative, `teacher`, uses the files' own responses as the text and only
   the target's predictions as labels (EAGLE showed it works); `sequences` builds either.
3. `features`: one forward of the target over every sequence; per answer position the last residual
   before the final norm (bfloat16, [N, H]) and the target's top-8 next-token ids and probabilities.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from specjax.models.llama import causal_mask

SOURCES = {   # file -> (prompt fields, response field)
    "gsm8k_train.jsonl": (("question",), "answer"),
    "gpteacher_codegen-instruct.json": (("instruction", "input"), "response"),
    "gpteacher_roleplay-simple-deduped-roleplay-instruct.json": (("instruction", "input"), "response"),
    "gpteacher_toolformer-dedupe-only-dataset.json": (("instruction", "input"), "response"),
    "selfinstruct_user_oriented_instructions.jsonl": (("instruction",), None),
    "selfinstruct_seed_tasks.jsonl": (("instruction",), None),
}
TOPK = 8


def default_prompts_dir() -> pathlib.Path | None:
  """SPECJAX_TRAIN_PROMPTS when set, else None: the prompt mix shipped with specjax (`store.PACKAGED`)."""
  env = os.environ.get("SPECJAX_TRAIN_PROMPTS")
  return pathlib.Path(env) if env else None


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("SPECJAX_CACHE", pathlib.Path.home() / ".cache" / "specjax"))


@dataclasses.dataclass(frozen=True)
class Record:
  id: str
  prompt: str
  response: str | None     # the file's own answer (teacher forcing only); None where the file has none
  heldout: bool


def _instances_text(row) -> tuple[str, str | None]:
  inst = (row.get("instances") or [{}])[0]
  prompt = row["instruction"] + (("\n\n" + inst["input"]) if inst.get("input") else "")
  return prompt, inst.get("output")


def _heldout(rid: str, every: int) -> bool:
  return int(hashlib.sha1(rid.encode()).hexdigest()[:8], 16) % every == 0


def _row_prompt(row) -> str | None:
  """A user's row: {"prompt"}, a Spec-Bench-style {"turns"} (its first turn), {"instruction"[, "input"]}
  or {"question"}; None when it has none of them."""
  if not isinstance(row, dict):
    return None
  if isinstance(row.get("prompt"), str):
    return row["prompt"]
  if isinstance(row.get("turns"), list) and row["turns"] and isinstance(row["turns"][0], str):
    return row["turns"][0]
  if isinstance(row.get("instruction"), str):
    return row["instruction"] + (("\n\n" + row["input"]) if isinstance(row.get("input"), str) and row["input"] else "")
  if isinstance(row.get("question"), str):
    return row["question"]
  return None


def file_prompts(path, *, heldout_every: int = 40) -> list[Record]:
  """A user's prompts file: JSONL (one object a line) or JSON (a list of objects), rows as `_row_prompt`
  reads them, in the file's order; ids are the rows' "id" when given, else FILE:LINE."""
  f = pathlib.Path(path)
  text = f.read_text(encoding="utf-8")
  if f.suffix == ".json":
    rows = json.loads(text)
    if not isinstance(rows, list):
      raise ValueError(f"{f}: a JSON prompts file holds a list of objects")
  else:
    rows = [json.loads(l) if l.strip() else None for l in text.splitlines()]
  out = []
  for i, row in enumerate(rows):
    if row is None:
      continue
    prompt = _row_prompt(row)
    if prompt is None:
      raise ValueError(f"{f}:{i + 1}: a row needs 'prompt', 'turns', 'instruction' or 'question'")
    if prompt.strip():
      rid = str(row.get("id", f"{f.name}:{i}"))
      out.append(Record(rid, prompt, row.get("response") or row.get("answer"), _heldout(rid, heldout_every)))
  if not out:
    raise ValueError(f"{f}: no prompts")
  return out


def mix_prompts(path=None, *, heldout_every: int = 40) -> list[Record]:
  """The shipped prompt mix (already interleaved across task types). A multi-turn record gives its
  first turn (the second needs the target's first answer: not done yet)."""
  from specjax.train import store
  return [Record(r["id"], r["turns"][0], None, _heldout(r["id"], heldout_every))
          for r in store.load_mix(path or store.PACKAGED)]


def training_prompts(directory=None, *, heldout_every: int = 40) -> list[Record]:
  """All records. None: the shipped mix (or SPECJAX_TRAIN_PROMPTS); a file: a user's prompts
  (`file_prompts`); a directory: the train-prompts files, interleaved round-robin across sources (each
  source in a fixed shuffled order), so any prefix of the list is balanced. A record is held out when
  a hash of its id says so (1 in `heldout_every`), independently of how many records are used."""
  d = pathlib.Path(directory) if directory else default_prompts_dir()
  if d is None:
    return mix_prompts(heldout_every=heldout_every)
  if d.is_file():
    return file_prompts(d, heldout_every=heldout_every)
  if not d.is_dir():
    raise FileNotFoundError(f"training prompts not found at {d} (set --prompts DIR|FILE or SPECJAX_TRAIN_PROMPTS)")
  per_source = []
  for name, (fields, resp) in SOURCES.items():
    f = d / name
    if not f.exists():
      continue
    text = f.read_text(encoding="utf-8")
    rows = json.loads(text) if name.endswith(".json") else [json.loads(l) for l in text.splitlines() if l.strip()]
    recs = []
    for i, row in enumerate(rows):
      if "instances" in row:
        prompt, response = _instances_text(row)
      else:
        prompt = "\n\n".join(str(row[k]) for k in fields if row.get(k))
        response = row.get(resp) if resp else None
      if not prompt.strip():
        continue
      rid = f"{name}:{i}"
      recs.append(Record(rid, prompt, response, _heldout(rid, heldout_every)))
    np.random.default_rng(0).shuffle(recs)
    per_source.append(recs)
  if not per_source:
    raise FileNotFoundError(f"no training prompt files in {d}; expected some of {', '.join(SOURCES)}")
  out = []
  for i in range(max(len(r) for r in per_source)):
    out.extend(r[i] for r in per_source if i < len(r))
  return out


def select(records: list[Record], n: int, *, heldout: bool) -> list[Record]:
  return [r for r in records if r.heldout == heldout][:n]


# ----------------------------------------------------------------------------- sequences

def _append_jsonl(path: pathlib.Path, rows: list[dict]):
  with open(path, "a", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_jsonl_prefix(path: pathlib.Path) -> list[dict]:
  """Complete lines of an append-only log; a torn last line (a crash mid-write) is cut off."""
  if not path.exists():
    return []
  data = path.read_bytes()
  end = data.rfind(b"\n") + 1
  if end < len(data):
    with open(path, "r+b") as f:
      f.truncate(end)
  return [json.loads(l) for l in data[:end].decode("utf-8").splitlines() if l.strip()]


def encode(target, records: list[Record], *, max_prompt_tokens: int = 256) -> list[dict]:
  """Records -> {"id", "prompt": token ids (chat template applied, the last max_prompt_tokens kept),
  "response": the file's own answer or None}."""
  from specjax.program import encode_prompts
  return [{"id": r.id, "prompt": encode_prompts(target, [r.prompt], chat=True)[0][-max_prompt_tokens:],
           "response": r.response} for r in records]


def sequences(target, items: list[dict], path: pathlib.Path, *, mode: str = "distill", answer_tokens: int = 256,
              batch_size: int = 16, deadline: float | None = None, progress: bool = True) -> list[dict]:
  """Token sequences {"id", "prompt": [ids], "answer": [ids]} for encoded `items` (see `encode`),
  appended to `path` as they are made: resumable, ids already in the file are skipped.

  mode "distill": the target's greedy answer (up to answer_tokens, stopping at EOS), generated in
  batches of similar prompt lengths by the compiled generator; stops starting batches after
  `deadline` (time.time()). mode "teacher": the item's own response, tokenized (no generation)."""
  from specjax.program import Program, Settings

  from specjax.parallel import hosts

  path.parent.mkdir(parents=True, exist_ok=True)
  done = {r["id"] for r in read_jsonl_prefix(path)}
  if not hosts.same_everywhere(json.dumps(sorted(done))):
    # Across processes (each with its own cache, hosts.process_dir) generation runs on all of them together:
    # they must agree on what is left to do. Caches that disagree (a process stopped mid-write) are made anew.
    path.write_text("")
    done = set()
  todo = [it for it in items if it["id"] not in done]
  if mode == "teacher":
    _append_jsonl(path, [{"id": it["id"], "prompt": it["prompt"],
                          "answer": target.tokenizer.encode(it["response"])[:answer_tokens]}
                         for it in todo if it.get("response")])
  elif mode == "distill":
    from specjax.train import store
    stored = store.matching(todo, store.read(store.directory(target.fingerprint, answer_tokens)))
    _append_jsonl(path, stored)
    if stored and progress:
      print(f"distill: {len(stored)} answers taken from {store.root()}", flush=True)
    taken = {r["id"] for r in stored}
    todo = [it for it in todo if it["id"] not in taken]
    todo.sort(key=lambda it: len(it["prompt"]))      # similar lengths share a padded shape and a compile
    t0, made = time.perf_counter(), 0
    program, settings = Program(target), Settings.make(max_new_tokens=answer_tokens)   # greedy, plain decoding
    for s in range(0, len(todo), batch_size):
      if deadline is not None and time.time() > deadline:
        break
      chunk = todo[s:s + batch_size]
      g = program.generate([it["prompt"] for it in chunk], settings)
      _append_jsonl(path, [{"id": it["id"], "prompt": it["prompt"], "answer": out}
                           for it, out in zip(chunk, g.token_ids)])
      made += sum(g.new_tokens)
      if progress:
        rate = made / (time.perf_counter() - t0)
        print(f"distill: {s + len(chunk)}/{len(todo)} prompts, {made} tokens, {rate:.0f} tokens/s", flush=True)
  else:
    raise ValueError(f"unknown data mode {mode!r}; choose distill or teacher")
  have = {r["id"]: r for r in read_jsonl_prefix(path)}
  return [have[it["id"]] for it in items if it["id"] in have]     # in the items' order, whatever the file's


# ----------------------------------------------------------------------------- features

# The first row a drafter reading the state at t (to draft t+2, ...) must be trained on: pos -1, the prompt's
# second-to-last token. The prefill stops short of the root (the last prompt token, pos 0), whose KV the first
# verify writes, so the first step drafts from pos -1 (Medusa's head 0 untrained there: right on 0/24 Spec-Bench
# prompts, BENCHMARKS issue 24). Needs full features; EAGLE's rows pair the state at t with the token at t+1.
FIRST_DRAFT_POS = -1


@dataclasses.dataclass
class Features:
  """Answer positions of many sequences, concatenated. hidden [N, H] bfloat16: the target's last
  residual (before the final norm) at each position; top_ids [N, 8] int32 and top_p [N, 8] float16:
  the target's most likely next tokens and their probabilities there; token [N]: the token AT each
  position; seq [N]: which sequence; pos [N]: index within the sequence's answer part (position 0
  is the last prompt token, whose prediction is the answer's first token; prompt positions, kept
  only in `full` features, are negative); layers [N, C, H] bfloat16: the residuals after the C
  captured layers (EAGLE-3's low/mid/high), only when features were made with `capture`."""
  hidden: np.ndarray
  top_ids: np.ndarray
  top_p: np.ndarray
  token: np.ndarray
  seq: np.ndarray
  pos: np.ndarray
  layers: np.ndarray | None = None

  def __len__(self):
    return len(self.seq)

  def valid_ahead(self, k: int) -> np.ndarray:
    """[N] bool: position i+k exists in the same sequence."""
    n = len(self)
    idx = np.minimum(np.arange(n) + k, n - 1)
    return (np.arange(n) + k < n) & (self.seq[idx] == self.seq)


_FIELDS = ("hidden", "top_ids", "top_p", "token", "seq", "pos")


@dataclasses.dataclass(frozen=True)
class Deferred:
  """A feature column that is not stored (features on the fly): the target's forward in each training step
  computes it for the step's sequences. shape: the column's [N, ...] shape; capture: the target layers of
  a `layers` column."""
  shape: tuple
  capture: tuple = ()
  full: bool = True

  def rows(self, feat, name: str, rows, L: int) -> "OnTheFly":
    """The column `name` of whole sequences `rows` ((start, end) pairs of full features, which begin at
    the sequence's first token), as the token ids the step's target forward reads."""
    if not self.full:
      raise ValueError("features on the fly need full features (Recipe.full): rows must begin at the first token")
    tokens, length = np.zeros((len(rows), L), np.int32), np.zeros(len(rows), np.int32)
    for b, (s, e) in enumerate(rows):
      tokens[b, :e - s], length[b] = feat.token[s:e], e - s
    return OnTheFly(jnp.asarray(tokens), jnp.asarray(length), name, self.capture, (len(rows), L) + self.shape[1:])


@functools.partial(jax.tree_util.register_dataclass, data_fields=["tokens", "length"],
                   meta_fields=["name", "capture", "shape"])
@dataclasses.dataclass(frozen=True)
class OnTheFly:
  """A batch entry the training step fills in (`fill`): column `name` ("hidden" [B, L, H] or "layers"
  [B, L, C, H], float32, zero past each row's length) of the sequences tokens [B, L], length [B]."""
  tokens: jax.Array
  length: jax.Array
  name: str
  capture: tuple
  shape: tuple


def forward(graphdef, params, seq, capture=(), states: bool = True):
  """The target's features of token rows seq [B, T] (positions 0..T-1, causal): (hidden [B, T, H] bf16,
  top-8 ids [B, T, 8] int32, their probabilities float16, captured layers [B, T, C, H] bf16 or an empty
  array). states False: hidden and layers left out (empty arrays)."""
  model = nnx.merge(graphdef, params)
  B, T = seq.shape
  out = model(seq, jnp.broadcast_to(jnp.arange(T), (B, T)), None, causal_mask(B, T), capture=capture)
  p, ids = jax.lax.top_k(jax.nn.softmax(out.logits, -1), TOPK)
  layers = jnp.stack([out.layer_hidden[i] for i in capture], 2).astype(jnp.bfloat16) if capture and states else jnp.zeros(0)
  hidden = out.hidden.astype(jnp.bfloat16) if states else jnp.zeros(0)
  return hidden, ids.astype(jnp.int32), p.astype(jnp.float16), layers


def fill(graphdef, params, batch):
  """`batch` with every OnTheFly entry replaced by the target's features of its sequences (one forward of
  the target, `params`, for the whole batch; the entries of one batch share their sequences), rounded to
  bfloat16 as stored features are, so a step on the fly equals the step on stored features."""
  fly = lambda x: isinstance(x, OnTheFly)
  todo = [x for x in jax.tree.leaves(batch, is_leaf=fly) if fly(x)]
  if not todo:
    return batch
  capture = tuple(sorted({i for x in todo for i in x.capture}))
  hidden, _, _, layers = forward(graphdef, params, todo[0].tokens, capture)
  hidden, layers = jax.lax.stop_gradient((hidden, layers))
  live = jnp.arange(todo[0].tokens.shape[1])[None] < todo[0].length[:, None]          # [B, L]

  def one(x):
    if not fly(x):
      return x
    v = hidden if x.name == "hidden" else layers[:, :, [capture.index(i) for i in x.capture]]
    v = v.astype(jnp.float32)
    return jnp.where(live.reshape(live.shape + (1,) * (v.ndim - 2)), v, 0.0)
  return jax.tree.map(one, batch, is_leaf=fly)


def _feature_fn(graphdef, capture=(), states: bool = True, place=None, params=None):
  """`forward` jitted; on a mesh (`place`, train/placement.py) with the target's weights as decoding places
  them and the rows split over "data", the outputs gathered onto every device (replicated): across
  processes every process then holds all of them, as it holds all of the training data."""
  f = lambda params, seq: forward(graphdef, params, seq, capture, states)
  if place is None:
    return jax.jit(f)
  return jax.jit(f, in_shardings=(place.target_shardings(params), place.batch_sharding()),
                 out_shardings=place.lay.sharding())


def _holds(f: pathlib.Path, fields) -> bool:
  """Whether shard `f` exists with every field (a shard made without captured layers is remade with them)."""
  if not f.exists():
    return False
  with np.load(f, allow_pickle=False) as z:
    return set(fields) <= set(z.files)


def features(target, seqs: list[dict], directory: pathlib.Path | None, *, batch_tokens: int = 4096,
             shard_size: int = 128, full: bool = False, capture: tuple = (), states: bool = True,
             progress: bool = True) -> Features:
  """Target features of every sequence, computed in shards of `shard_size` sequences saved as .npz
  (no pickles) under `directory`; an existing shard is reused, so a killed run resumes. directory None:
  kept in memory only. full: also keep the prompt's positions (pos < 0), for drafters that attend over
  the whole sequence (Clover's augmenting block, EAGLE). capture: target layers whose residuals are kept
  too (`Features.layers`; C times the storage of `hidden`). states False (features on the fly): hidden
  and layers are `Deferred`, left to the training step's own target forward; only the small columns
  (top-8, tokens: about 60 bytes a position) are kept. On the target's mesh (api.load(..., mesh=...)) the
  forward runs sharded as decoding does, the rows split over "data"."""
  from specjax.parallel import hosts
  from specjax.train.placement import placement

  if directory is not None:
    directory.mkdir(parents=True, exist_ok=True)
  graphdef, params = nnx.split(target.model)
  place = placement(target.mesh, target.cfg)
  fn = _feature_fn(graphdef, tuple(capture), states, place, params)
  put = (lambda x: x) if place is None else (lambda x: place.put(x, place.batch_sharding()))
  if place is not None:      # across processes a jitted function takes only arrays already on the mesh
    params = place.put(params, place.target_shardings(params))
  fields = (_FIELDS + (("layers",) if capture else ())) if states else tuple(k for k in _FIELDS if k != "hidden")
  parts = []
  t0, made = time.perf_counter(), 0
  for s in range(0, len(seqs), shard_size):
    chunk = seqs[s:s + shard_size]
    # Named by content: a different selection of sequences never reuses a stale shard.
    key = hashlib.sha1(json.dumps([[r["id"], len(r["prompt"]), len(r["answer"])] for r in chunk]).encode()).hexdigest()[:10]
    f = None if directory is None else directory / f"shard_{s // shard_size:05d}_{key}.npz"
    # Across processes the forward runs on all of them together: a shard is read only where every process has it.
    if f is not None and hosts.all_processes(_holds(f, fields)):
      with np.load(f, allow_pickle=False) as z:
        parts.append({k: z[k] for k in fields})
      continue
    cols = {k: [] for k in fields}
    lens = [len(r["prompt"]) + len(r["answer"]) for r in chunk]
    groups, cur = [], []
    for j in np.argsort(lens, kind="stable"):     # ascending: the newest row is the group's longest
      if cur and (len(cur) + 1) * (-(-lens[j] // 64) * 64) > batch_tokens:
        groups.append(cur)
        cur = []
      cur.append(int(j))
    groups.append(cur)
    for group in groups:
      rows = [chunk[j] for j in group]
      L = -(-max(lens[j] for j in group) // 64) * 64
      # One batch shape per length bucket (and per shard size), so few compiles; on a mesh a multiple of "data".
      B = min(max(batch_tokens // L, 1), len(chunk))
      if place is not None:
        B = -(-B // place.data) * place.data
      arr = np.zeros((B, L), np.int32)
      for b, r in enumerate(rows):
        ids = r["prompt"] + r["answer"]
        arr[b, :len(ids)] = ids
      hid, ids, p, lay = jax.device_get(fn(params, put(jnp.asarray(arr))))
      for b, r in enumerate(rows):
        a, n = (0 if full else len(r["prompt"]) - 1), len(r["prompt"]) + len(r["answer"])
        if states:
          cols["hidden"].append(np.asarray(hid[b, a:n]).view(np.uint16))
        cols["top_ids"].append(ids[b, a:n])
        cols["top_p"].append(p[b, a:n])
        cols["token"].append(arr[b, a:n])
        cols["seq"].append(np.full(n - a, s + group[b], np.int32))
        cols["pos"].append(np.arange(a, n, dtype=np.int32) - (len(r["prompt"]) - 1))
        if capture and states:
          cols["layers"].append(np.asarray(lay[b, a:n]).view(np.uint16))
        made += n - a
    part = {k: np.concatenate(v) for k, v in cols.items()}
    if f is not None:
      tmp = f.with_suffix(f".{os.getpid()}.tmp.npz")     # per process: two runs making one shard never mix bytes
      np.savez(tmp, **part)
      os.replace(tmp, f)
    parts.append(part)
    if progress:
      print(f"features: {min(s + shard_size, len(seqs))}/{len(seqs)} sequences, "
            f"{made / (time.perf_counter() - t0):.0f} tokens/s", flush=True)
  cat = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0,)) for k in fields}
  for k in ("hidden", "layers"):
    if k in cat:
      cat[k] = cat[k].view(ml_dtypes.bfloat16)
  if not states:
    H = target.cfg.hidden
    cat["hidden"] = Deferred((len(cat["seq"]), H), full=full)
    if capture:
      cat["layers"] = Deferred((len(cat["seq"]), len(capture), H), tuple(capture), full)
  return Features(**cat)


def draft_vocab(train, V: int, n: int):
  """(vocab [n] sorted target ids or None, coverage, index [V] target id -> draft index or -1): the n
  tokens the target predicts most often on the training data (EAGLE-3's / FR-Spec's reduced vocabulary)."""
  if not n or n >= V:
    return None, 1.0, np.arange(V, dtype=np.int32)
  counts = np.bincount(train.top_ids[:, 0], minlength=V)
  vocab = np.sort(np.argsort(-counts, kind="stable")[:n]).astype(np.int32)
  index = np.full(V, -1, np.int32)
  index[vocab] = np.arange(n, dtype=np.int32)
  return vocab, float(counts[vocab].sum() / max(counts.sum(), 1)), index
