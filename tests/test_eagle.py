"""EAGLE with the EAGLE-2 dynamic tree: lossless with random weights, the tree's batched expansion
equals the draft run along each node's own path, the draft KV cache after every step equals the
draft recomputed over the committed sequence, checkpoints, training lowers the loss and resumes exactly."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import specjax
from specjax.drafters import eagle, registry
from specjax.drafters.eagle import Eagle, Eagle3
from specjax.models.llama import causal_mask
from specjax.process_cache import CACHE
from specjax.protocol import Context, Prefill
from specjax.testing import tiny_target
from specjax.train import eagle as eagle_train
from specjax.train import loop

PROMPTS = [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 3, 3, 3, 21, 40, 2], [11], [30, 31, 32, 33, 30, 31]]


@pytest.fixture(scope="module")
def tiny():
  return tiny_target(seed=1, scale=8.0, eos_id=17)


@pytest.mark.parametrize("config", [dict(depth=3, top_k=2, nodes=4, draft_vocab=24),          # defaults: the contract test
                                    dict(depth=6, top_k=5, nodes=24), dict(depth=1, top_k=3, nodes=2)])
def test_random_weights_are_lossless_on_tiny_model(tiny, config):
  d = Eagle.untrained(tiny, seed=4, **config)
  for batch, max_new in ((PROMPTS, 33), (PROMPTS[1:2], 9), (PROMPTS[2:3], 17)):
    base = specjax.generate(tiny, batch, max_new_tokens=max_new)
    g = specjax.generate(tiny, batch, max_new_tokens=max_new, drafter=d)
    assert g.token_ids == base.token_ids
    if len(batch) == 4:                  # drafts were accepted: multi-token commits were exercised
      assert sum(g.new_tokens) > sum(g.target_forwards)


def test_new_weights_take_effect_without_recompiling(tiny):
  a = Eagle.untrained(tiny, seed=1)
  ga = specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=a)
  traces = CACHE.traces
  b = Eagle.untrained(tiny, seed=2, noise=0.5)
  gb = specjax.generate(tiny, PROMPTS, max_new_tokens=24, drafter=b)
  assert CACHE.traces == traces and gb.token_ids == ga.token_ids
  assert ga.target_forwards != gb.target_forwards


# ------------------------------------------------------------------ the tree

def _committed_draft(t, p, seq):
  """The draft over one committed sequence seq [n+1] (root = seq[n]): its cache (k, v [n, KVH, D]) and
  the output at the last entry, with the target's features from a plain causal forward."""
  n = len(seq) - 1
  out = t.model(jnp.asarray([seq[:-1]]), jnp.arange(n)[None], None, causal_mask(1, n))
  f = t.model.norm(out.hidden).astype(jnp.float32)
  e = t.model.embed_tokens(jnp.asarray([seq[1:]])).astype(jnp.float32)
  g, k, v = eagle.entries(t.cfg, p, e, f, jnp.arange(n)[None], eagle.causal(1, n))
  return g[0, -1], k[0], v[0]


def _path_logprob(t, p, seq, path_tokens, head_w):
  """log p of each token along a path after the committed seq, the draft run one entry at a time
  over the path (each entry's feature: the previous entry's output)."""
  g, kc, vc = _committed_draft(t, p, seq)
  n = kc.shape[0]
  total, out = 0.0, []
  f = g
  for j, y in enumerate(path_tokens):
    total += float(jax.nn.log_softmax(jnp.dot(f, head_w))[y])
    out.append(total)
    if j + 1 == len(path_tokens):
      break
    e = t.model.embed_tokens(jnp.asarray([[y]])).astype(jnp.float32)
    T = kc.shape[0]
    g, k, v = eagle.entries(t.cfg, p, e, f[None, None], jnp.asarray([[n + j]]), eagle.causal(1, 1),
                            (heads_first(kc[None]), heads_first(vc[None])), jnp.ones((1, 1, T), bool))
    kc, vc = jnp.concatenate([kc, k[0]]), jnp.concatenate([vc, v[0]])
    f = g[0, 0]
  return out


def heads_first(x):
  """[B, S, KVH, D] -> the cache layout [B, KVH, S, D]."""
  return jnp.swapaxes(jnp.asarray(x), 1, 2)


@pytest.mark.parametrize("depth,top_k,nodes", [(4, 3, 12), (3, 4, 40), (5, 2, 7)])
def test_tree_expansion_equals_the_draft_along_each_path(depth, top_k, nodes):
  """Every node's cumulative log-probability from the batched per-depth expansion (tree attention
  among frontier entries) equals running the draft along that node's own path, and every node is
  one of its parent's top_k children."""
  t = tiny_target(seed=2, scale=4.0)
  p = {k: jnp.asarray(v) for k, v in eagle.initial(t, seed=3, noise=0.3).items()}
  rng = np.random.default_rng(depth)
  seqs = [rng.integers(0, t.cfg.vocab, L).tolist() for L in (6, 9, 4)]
  B, S = len(seqs), 16
  kc = np.zeros((B, S, t.cfg.kv_heads, t.cfg.head_dim), np.float32)
  vc = np.zeros_like(kc)
  gs = []
  for b, sq in enumerate(seqs):
    g, k, v = _committed_draft(t, p, sq)
    kc[b, :k.shape[0]], vc[b, :k.shape[0]] = k, v
    kc[b, k.shape[0]:] = 7.0                   # garbage past the committed length must be invisible
    gs.append(g)
  head_w = jnp.asarray(t.model.head_weight(), jnp.float32)
  length = jnp.asarray([len(s) - 1 for s in seqs], jnp.int32)
  root = jnp.asarray([s[-1] for s in seqs], jnp.int32)
  tok, parent, joint = eagle.grow(t.cfg, p, lambda g: jax.nn.log_softmax(jnp.dot(g, head_w), -1),
                                  lambda i: (i, t.model.embed_tokens(i).astype(jnp.float32)), jnp.stack(gs), root,
                                  heads_first(kc), heads_first(vc), length, depth=depth, top_k=top_k, nodes=nodes)
  tok, parent, joint = map(np.asarray, (tok, parent, joint))
  assert tok.shape[1] == 1 + min(nodes, eagle.pool_size(depth, top_k))
  for b, sq in enumerate(seqs):
    assert (parent[b, 1:] >= 0).all() and all(parent[b, j] < j for j in range(1, tok.shape[1]))
    for j in range(1, tok.shape[1]):
      path, a = [], j
      while a > 0:
        path.append(a)
        a = parent[b, a]
      path = path[::-1]
      assert len(path) <= depth
      want = _path_logprob(t, p, sq, [int(tok[b, i]) for i in path], head_w)
      np.testing.assert_allclose(joint[b, j], want[-1], rtol=1e-4, atol=1e-4)
  # EAGLE-2's global rerank: the kept nodes are the `nodes` most likely of the whole drafted pool.
  everything = np.asarray(eagle.grow(t.cfg, p, lambda g: jax.nn.log_softmax(jnp.dot(g, head_w), -1),
                                     lambda i: (i, t.model.embed_tokens(i).astype(jnp.float32)), jnp.stack(gs), root,
                                     heads_first(kc), heads_first(vc), length, depth=depth, top_k=top_k,
                                     nodes=10_000)[2])
  assert everything.shape[1] == 1 + eagle.pool_size(depth, top_k)
  n = tok.shape[1] - 1
  want = -np.sort(-everything[:, 1:], 1)[:, :n]
  np.testing.assert_allclose(-np.sort(-joint[:, 1:], 1), want, rtol=1e-5, atol=1e-5)


def topK_genrate(logp, top_k, total_tokens):
  """A port of EAGLE-2's selection in `topK_genrate` (SafeAILab/EAGLE, eagle/model/cnets.py), one row.
  logp[0] [V]: the draft's log-probabilities at the root; logp[i] [top_k, V]: at the frontier of step i (its
  nodes in the order the previous step ranked them). Returns (tokens [n], parents [n]: 0 the root, j the
  j-th kept node), n = total_tokens. Equal scores: the lower index first (torch.topk leaves it unspecified)."""
  topk = lambda x, k: np.argsort(-x, axis=-1, kind="stable")[..., :k]
  idx = topk(logp[0], top_k)
  scores = logp[0][idx]
  scores_list, parents_list, tokens = [scores], [np.zeros(1, np.int64)], [idx]
  cs_index = np.arange(top_k)
  for i in range(len(logp) - 1):
    parents_list.append(cs_index + 1 + top_k ** 2 * max(0, i - 1) + (top_k if i > 0 else 0))
    idx = topk(logp[i + 1], top_k)                                            # [top_k, top_k]
    cu = np.take_along_axis(logp[i + 1], idx, 1) + scores[:, None]
    cs_index = topk(cu.reshape(-1), top_k)
    scores = cu.reshape(-1)[cs_index]
    tokens.append(idx)
    scores_list.append(cu)
  every = np.concatenate([x.reshape(-1) for x in scores_list])
  sel = np.sort(topk(every, total_tokens))
  parents = np.concatenate(parents_list)[sel // top_k]
  index = np.searchsorted(sel, parents - 1) + 1
  return np.concatenate([x.reshape(-1) for x in tokens])[sel], np.where(parents == 0, 0, index)


@pytest.mark.parametrize("depth,top_k,nodes,grid", [(3, 4, 10, 0.0), (5, 3, 16, 0.0), (6, 10, 60, 0.0),
                                                    (4, 4, 12, 0.25), (5, 3, 9, 0.5), (6, 10, 60, 0.5)])
def test_tree_selection_is_topK_genrate(depth, top_k, nodes, grid):
  """Fed the same log-probabilities at every step, our dynamic tree keeps the nodes and parents that
  EAGLE-2's `topK_genrate` keeps. grid > 0: log-probabilities on a grid plus noise under 1e-4, so joint
  scores of different depths tie or nearly tie (a depth penalty in the rerank would reorder them)."""
  t = tiny_target(seed=2, scale=4.0)
  p = {k: jnp.asarray(v) for k, v in eagle.initial(t, seed=3).items()}
  rng = np.random.default_rng([depth, top_k])
  B, V, S = 2, t.cfg.vocab, 4

  def draw(*shape):
    x = rng.normal(size=shape) * 2
    if grid:                                     # not normalised, so that sums over different rows stay on the grid
      return (-np.round(np.abs(x) / grid) * grid - rng.uniform(0, 5e-5, shape)).astype(np.float32)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)

  logp = [draw(B, V)] + [draw(B, top_k, V) for _ in range(depth - 1)]
  calls = iter(logp)
  zeros = jnp.zeros((B, t.cfg.kv_heads, S, t.cfg.head_dim))
  tok, parent, _ = eagle.grow(t.cfg, p, lambda g: jnp.asarray(next(calls)),
                              lambda i: (i, t.model.embed_tokens(i).astype(jnp.float32)),
                              jnp.zeros((B, t.cfg.hidden)), jnp.zeros(B, jnp.int32), zeros, zeros,
                              jnp.ones(B, jnp.int32), depth=depth, top_k=top_k, nodes=nodes)
  for b in range(B):
    want_tok, want_parent = topK_genrate([x[b] for x in logp], top_k, nodes)
    np.testing.assert_array_equal(np.asarray(tok[b, 1:]), want_tok)
    np.testing.assert_array_equal(np.asarray(parent[b, 1:]), want_parent)


# ------------------------------------------------------------------ the draft cache holds the committed path

@dataclasses.dataclass(frozen=True)
class Checked(Eagle):
  """Eagle that, after every update, compares its draft cache and last output with the draft
  recomputed from scratch over the committed sequence (fresh causal target features), and sends
  the largest difference and the committed counts to the host."""
  break_path: bool = False
  name = "eagle-checked"

  def update(self, m, state, ctx, step):
    if self.break_path:          # a wrong cache: the first nodes of the tree instead of the accepted path
      acc = dataclasses.replace(step.acceptance, path=jnp.broadcast_to(jnp.arange(step.acceptance.path.shape[1]),
                                                                        step.acceptance.path.shape))
      step = dataclasses.replace(step, acceptance=acc)
    new = super().update(m, state, ctx, step)
    B, S = ctx.tokens.shape
    out = m.target(ctx.tokens, jnp.broadcast_to(jnp.arange(S), (B, S)), None, causal_mask(B, S))
    ref = super().init(m, Context(ctx.tokens, ctx.root, ctx.root + 1, ctx.done), Prefill(out.hidden[:, :-1], {}))
    live = (jnp.arange(S)[None, :] < ctx.root[:, None])[:, None, :, None]       # caches [B, KVH, S, D]
    err = jnp.maximum(jnp.max(jnp.where(live, jnp.abs(new["k"] - ref["k"]), 0.0)),
                      jnp.max(jnp.where(live, jnp.abs(new["v"] - ref["v"]), 0.0)))
    err = jnp.maximum(err, jnp.max(jnp.abs(new["g"] - ref["g"])))
    jax.debug.callback(lambda e, c: self.log.append((float(e), np.asarray(c))), err, step.committed)
    return new

  @property
  def log(self):
    return _LOG


_LOG = []


@pytest.mark.parametrize("broken", [False, True])
def test_draft_cache_after_each_step_is_the_draft_over_the_committed_sequence(tiny, broken):
  d = Checked.untrained(tiny, seed=4, noise=0.02, depth=4, top_k=3, nodes=8, break_path=broken)
  _LOG.clear()
  g = specjax.generate(tiny, PROMPTS, max_new_tokens=30, drafter=d)
  assert g.token_ids == specjax.generate(tiny, PROMPTS, max_new_tokens=30).token_ids
  errs = np.array([e for e, _ in _LOG])
  committed = np.concatenate([c for _, c in _LOG])
  assert len(errs) >= 5 and (committed >= 2).sum() >= 3          # steps that accepted drafted tokens
  if broken:
    assert errs.max() > 1e-2                                     # the check sees a cache of the wrong nodes
  else:
    assert errs.max() < 1e-3, errs.max()


# ------------------------------------------------------------------ training

CFG = dict(drafter="eagle", steps=30, batch=4, lr=1e-2, warmup=3, eval_every=15, save_every=10, draft_vocab=32,
           nodes=8, eval_positions=256)


def test_training_lowers_the_loss_and_the_drafter_is_lossless(tiny_full, tmp_path):
  t, train, held = tiny_full
  c = loop.TrainConfig(**CFG).resolved()
  recipe = eagle_train.EagleRecipe(t, train, held, c)
  batch = recipe.batch(np.arange(8), 0)
  before = float(recipe.loss(recipe.init(), recipe.consts, batch)[0])
  d, summary = loop.fit(t, train, held, c, tmp_path / "run", progress=False, log=lambda m: None)
  after = float(recipe.loss(d.params["p"].get_value(), recipe.consts, batch)[0])
  assert after < 0.8 * before
  assert summary["tau"] > 1.3 and summary["top1"][0] > 0.3
  assert set(summary["tau_by_nodes"]) == {"/".join(map(str, b)) for b in recipe.BUDGETS}
  base = specjax.generate(t, PROMPTS, max_new_tokens=30)
  g = specjax.generate(t, PROMPTS, max_new_tokens=30, drafter=d)
  assert g.token_ids == base.token_ids
  assert sum(g.new_tokens) / sum(g.target_forwards) > 1.3        # the trained draft is accepted when decoding


def test_loss_targets_the_next_feature_and_token_and_noises_the_input(tiny_full, monkeypatch):
  """EAGLE-1's loss at entry t: SmoothL1 against f_{t+1} plus 0.1 x the soft cross-entropy against
  the target's full-vocabulary softmax at t+1 (read at the draft vocabulary). A draft whose output is
  exactly f_{t+1} has only the token term left (computed here in numpy); one that outputs f_t does not.
  The input noise is uniform of half-width 0.1 x 512 / L per sequence of L tokens (the public width)."""
  from specjax.models.llama import rms_norm
  t, train, held = tiny_full
  recipe = eagle_train.EagleRecipe(t, train, held, loop.TrainConfig(**CFG).resolved())
  p = recipe.init()
  units = np.arange(4)
  batch = recipe.batch(units, 0)
  for b, (s, e) in enumerate(recipe.spans_train[units]):
    half = 0.1 * 512 / (e - s)
    assert 0.9 * half < float(jnp.abs(batch["noise"][b]).max()) <= half
  quiet = dict(batch, noise=jnp.zeros_like(batch["noise"]))
  assert float(recipe.loss(p, recipe.consts, batch)[0]) != float(recipe.loss(p, recipe.consts, quiet)[0])
  f = np.asarray(rms_norm(batch["h"], recipe.consts["norm_w"], t.cfg.norm_eps))
  f_next = np.concatenate([f[:, 1:], f[:, -1:]], 1)
  logp = _log_softmax(f_next @ np.asarray(recipe.consts["head_w"], np.float64))
  target = np.exp(_log_softmax(f_next @ np.asarray(t.model.head_weight(), np.float64)))[..., recipe.vocab]
  valid = np.asarray(batch["valid"])
  want = 0.1 * -(target * logp).sum(-1)[valid].mean()
  monkeypatch.setattr(eagle_train, "sequence_outputs", lambda cfg, p, e, f_in, nxt: (jnp.asarray(f_next), None, None))
  np.testing.assert_allclose(float(recipe.loss(p, recipe.consts, batch)[0]), want, rtol=1e-4)
  monkeypatch.setattr(eagle_train, "sequence_outputs", lambda cfg, p, e, f_in, nxt: (jnp.asarray(f), None, None))
  assert float(recipe.loss(p, recipe.consts, batch)[0]) > want + 1e-3


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_full_softmax_targets_are_the_frozen_head_over_the_normed_stored_state(tiny_full):
  """The soft targets are softmax(head_w . final_norm(h)) of the stored hidden state, temperature 1:
  over the whole vocabulary read at the draft vocabulary's tokens (EAGLE-1, Clover-2) or over the draft
  vocabulary's logits alone (EAGLE-3). At each position they reproduce the target's own stored top-1
  probability (made from its float32 logits; the stored state is bfloat16)."""
  from specjax.models.llama import rms_norm
  from specjax.train.recipe import soft_targets
  t, train, held = tiny_full
  recipe = eagle_train.EagleRecipe(t, train, held, loop.TrainConfig(**CFG).resolved())
  f = np.asarray(rms_norm(jnp.asarray(train.hidden[:300], jnp.float32), recipe.consts["norm_w"], t.cfg.norm_eps), np.float64)
  full = np.exp(_log_softmax(f @ np.asarray(t.model.head_weight(), np.float64)))                 # [n, V]
  got = np.asarray(soft_targets(recipe.consts, jnp.asarray(f, jnp.float32), renormalise=False))
  np.testing.assert_allclose(got, full[:, recipe.vocab], rtol=1e-4, atol=1e-6)
  assert got.sum(-1).max() < 1 - 1e-3                                # the tail outside the draft vocabulary is lost
  renorm = np.asarray(soft_targets(recipe.consts, jnp.asarray(f, jnp.float32), renormalise=True))
  np.testing.assert_allclose(renorm, full[:, recipe.vocab] / full[:, recipe.vocab].sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
  top1 = train.top_ids[:300, 0]
  np.testing.assert_allclose(full[np.arange(300), top1], np.asarray(train.top_p[:300, 0], np.float64), atol=2e-2)
  assert (full.argmax(-1) == top1).mean() > 0.95


def test_eagle3_full_targets_are_renormalised_and_mask_argmax_outside_the_vocabulary():
  """EAGLE-3's loss with full targets: step i at t against the softmax of the frozen head's
  draft-vocabulary logits on the normed state at t+1+i, scored only where the target's top-1 there
  lies in the draft vocabulary (computed here in numpy); the draft's own head scores when it has one."""
  from specjax.models.llama import rms_norm
  steps, L, N = 3, 9, 24
  t, p, _, nxt, embed_w = _unroll_case(steps, L)
  rng = np.random.default_rng(2)
  B, H = nxt.shape[0], t.cfg.hidden
  layers = jnp.asarray(rng.normal(size=(B, L, 3, H)), jnp.float32)
  h = jnp.asarray(rng.normal(size=(B, L, H)), jnp.float32)
  lab = rng.integers(0, N, (B, L))
  lab[rng.random((B, L)) < 0.3] = -1                                 # the target's top-1 outside the vocabulary
  valid = np.ones((B, L), bool)
  valid[:, -1] = False                                                # entry t needs a position t+1
  valid[1, -3:] = False
  head_w = jnp.asarray(t.model.head_weight(jnp.arange(N)), jnp.float32)
  consts = dict(embed=embed_w, head_w=head_w, norm_w=t.model.final_norm[...])
  batch = dict(layers=layers, h=h, nxt=nxt, valid=jnp.asarray(valid),
               top_idx=jnp.asarray(np.concatenate([lab[..., None], np.full((B, L, 7), -1)], -1), jnp.int32),
               top_p=jnp.zeros((B, L, 8), jnp.float32))
  f = np.asarray(rms_norm(h, consts["norm_w"], t.cfg.norm_eps), np.float64)
  want_p = np.exp(_log_softmax(f @ np.asarray(head_w, np.float64)))                           # at position s
  scored = valid & (lab >= 0)
  for own in (False, True):
    q = dict(p, head=jnp.asarray(rng.normal(size=(H, N)), jnp.float32)) if own else p
    loss, _ = eagle_train.ttt_loss(t.cfg, q, consts, batch, steps=steps, targets="full")
    outs = eagle_train.unroll(t.cfg, q, embed_w, eagle.fuse(t.cfg, q, layers), nxt, steps)
    want = 0.0
    for i, g in enumerate(outs):
      logp = _log_softmax(eagle.head_input(t.cfg, q, g) @ (q["head"] if own else head_w))[:, :L - 1 - i]
      tgt = want_p[:, 1 + i:]                                         # the target at t+1+i
      on = scored[:, i:L - 1]                                         # valid and top-1 in the vocabulary at t+1+i
      want += 0.8 ** i * (-(tgt * logp).sum(-1))[on].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)


def test_resume_after_a_crash_ends_with_the_same_weights(tiny_full, tmp_path):
  t, train, held = tiny_full
  c = loop.TrainConfig(**dict(CFG, steps=20, eval_every=20))
  whole, _ = loop.fit(t, train, held, c, tmp_path / "a", progress=False, log=lambda m: None)
  loop.fit(t, train, held, c, tmp_path / "b", stop_after=10, progress=False, log=lambda m: None)
  resumed, _ = loop.fit(t, train, held, c, tmp_path / "b", progress=False, log=lambda m: None)
  # A time box (--max-seconds) stops after the step in flight, checkpointed; a rerun continues the same run.
  _, cut = loop.fit(t, train, held, c, tmp_path / "c", max_seconds=0, progress=False, log=lambda m: None)
  assert cut["steps_done"] == 1
  boxed, _ = loop.fit(t, train, held, c, tmp_path / "c", progress=False, log=lambda m: None)
  a = whole.params["p"].get_value()
  for other in (resumed, boxed):
    b = other.params["p"].get_value()
    assert set(a) == set(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


# ------------------------------------------------------------------ checkpoints

def test_checkpoint_options_are_checked(tmp_path):
  """(The round trip itself, weights and the refusal of another target: tests/test_drafter_contract.py.)"""
  from specjax.io import checkpoint
  t = tiny_target(seed=1, scale=8.0)
  d = Eagle.untrained(t, seed=2, draft_vocab=16, depth=3, top_k=3, nodes=5)
  path = checkpoint.save_drafter(tmp_path / "eagle.safetensors", d, t)
  loaded = registry.make(f"eagle:{path}")
  assert loaded.name == "eagle" and loaded.draft_vocab == 16
  assert (loaded.depth, loaded.top_k, loaded.nodes) == (Eagle().depth, Eagle().top_k, Eagle().nodes)   # the budget is the decoder's
  with pytest.raises(ValueError, match="holds a"):
    registry.make(f"clover2:{path}")
  with pytest.raises(ValueError, match="no option"):
    registry.make(f"eagle:{path}", dims=(1,))
  with pytest.raises(ValueError, match="top_k must be a positive integer"):
    registry.make(f"eagle:{path}", top_k=0)
  with pytest.raises(ValueError, match="exceeds the draft vocabulary"):
    registry.make(f"eagle:{path}", top_k=17)
  with pytest.raises(ValueError, match="do not fit"):            # sizes are checked without a recorded target too
    specjax.generate(tiny_target(seed=0, hidden=48, heads=6, kv_heads=2), [[1, 2]],
                     drafter=dataclasses.replace(Eagle.untrained(t), trained_for=""))


# ------------------------------------------------------------------ EAGLE-3

@pytest.fixture(scope="module")
def tiny4():
  return tiny_target(seed=1, scale=8.0, eos_id=17, layers=4)


@pytest.mark.parametrize("config", [dict(draft_vocab=24), dict(depth=3, top_k=2, nodes=5)])
def test_eagle3_random_weights_are_lossless_through_the_captured_layers(tiny4, config):
  d = Eagle3.untrained(tiny4, seed=4, noise=0.3, **config)
  assert d.capture == (1, 1, 0)
  for batch, max_new in ((PROMPTS, 33), (PROMPTS[1:2], 9)):
    base = specjax.generate(tiny4, batch, max_new_tokens=max_new)
    g = specjax.generate(tiny4, batch, max_new_tokens=max_new, drafter=d)
    assert g.token_ids == base.token_ids


def _unroll_case(steps=3, L=9, B=2, seed=0):
  t = tiny_target(seed=2, scale=4.0, layers=4)
  p = {k: jnp.asarray(v) for k, v in eagle.initial(t, seed=3, noise=0.3, three=True).items()}
  rng = np.random.default_rng(seed)
  f0 = jnp.asarray(rng.normal(size=(B, L, t.cfg.hidden)), jnp.float32)
  nxt = jnp.asarray(rng.integers(0, t.cfg.vocab, (B, L)), jnp.int32)
  return t, p, f0, nxt, jnp.asarray(t.model.embed[...], jnp.float32)


def test_training_time_test_step_i_reads_the_drafts_own_step_i_minus_1_output():
  """Each unrolled step equals the draft run as decoding runs it: after the committed entries up
  to t (step 0, the target's features), a chain of entries at positions t+1, t+2, ... whose feature
  is the previous entry's OUTPUT (not the target's feature at that position)."""
  steps, L = 3, 9
  t, p, f0, nxt, embed_w = _unroll_case(steps, L)
  outs = eagle_train.unroll(t.cfg, p, embed_w, f0, nxt, steps)
  B = f0.shape[0]
  _, k0, v0 = eagle.entries(t.cfg, p, embed_w[nxt], f0, jnp.broadcast_to(jnp.arange(L), (B, L)), eagle.causal(B, L))
  for b in range(B):
    for pos in range(L - steps + 1):
      kc, vc = heads_first(k0[b:b + 1, :pos + 1]), heads_first(v0[b:b + 1, :pos + 1])
      f = outs[0][b:b + 1, pos:pos + 1]
      own, teacher = [], []
      for i in range(1, steps):
        e = embed_w[nxt[b:b + 1, pos + i:pos + i + 1]]
        args = (jnp.asarray([[pos + i]]), eagle.causal(1, 1), (kc, vc), jnp.ones((1, 1, kc.shape[2]), bool))
        g, k, v = eagle.entries(t.cfg, p, e, f, *args)
        # Had step i read the target's feature at that position instead, it would differ.
        teacher.append(eagle.entries(t.cfg, p, e, f0[b:b + 1, pos + i:pos + i + 1], *args)[0])
        own.append(g)
        kc, vc = jnp.concatenate([kc, heads_first(k)], 2), jnp.concatenate([vc, heads_first(v)], 2)
        f = g
      for i in range(1, steps):
        np.testing.assert_allclose(outs[i][b, pos], own[i - 1][0, 0], rtol=2e-4, atol=2e-4)
        assert not np.allclose(outs[i][b, pos], teacher[i - 1][0, 0], rtol=1e-2, atol=1e-2)


def test_training_time_test_loss_weights_steps_and_trains():
  """The loss is sum_i 0.8^i CE_i with step i scored against the target at t+1+i, and gradient
  steps through the unroll lower it."""
  import optax
  steps, L = 3, 9
  t, p, f0, nxt, embed_w = _unroll_case(steps, L)
  rng = np.random.default_rng(1)
  B, H = f0.shape[0], t.cfg.hidden
  layers = jnp.asarray(rng.normal(size=(B, L, 3, H)), jnp.float32)
  top_idx = jnp.asarray(np.concatenate([rng.integers(0, t.cfg.vocab, (B, L, 1)), np.full((B, L, 7), -1)], -1), jnp.int32)
  batch = dict(layers=layers, nxt=nxt, valid=jnp.ones((B, L), bool), top_idx=top_idx,
               top_p=jnp.asarray(np.concatenate([np.ones((B, L, 1)), np.zeros((B, L, 7))], -1), jnp.float32))
  consts = dict(embed=embed_w, head_w=jnp.asarray(t.model.head_weight(), jnp.float32))
  loss, acc = eagle_train.ttt_loss(t.cfg, p, consts, batch, steps=steps, targets="top8")
  assert acc.shape == (steps,)
  outs = eagle_train.unroll(t.cfg, p, embed_w, eagle.fuse(t.cfg, p, layers), nxt, steps)
  want = 0.0
  for i, g in enumerate(outs):
    logp = np.asarray(jax.nn.log_softmax(eagle.head_input(t.cfg, p, g) @ consts["head_w"], -1))
    lab = np.asarray(top_idx[:, i:, 0])                               # the target's token at t+1+i
    want += 0.8 ** i * -np.take_along_axis(logp[:, :L - i], lab[..., None], -1).mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  opt = optax.adam(1e-2)
  state = opt.init(p)
  grad = jax.jit(jax.grad(lambda q: eagle_train.ttt_loss(t.cfg, q, consts, batch, steps=steps, targets="top8")[0]))
  for _ in range(40):
    upd, state = opt.update(grad(p), state)
    p = optax.apply_updates(p, upd)
  assert float(eagle_train.ttt_loss(t.cfg, p, consts, batch, steps=steps, targets="top8")[0]) < 0.7 * float(loss)


def test_eagle3_checkpoint_keeps_its_layers_and_own_head(tmp_path, tiny4):
  """EAGLE-3 with its own head (weight `head`, `own_head` columns) and without one (the shipped
  checkpoint's layout: the target's frozen rows) both round-trip through a checkpoint and decode
  losslessly; an own head equal to the target's rows drafts exactly what the frozen rows draft."""
  from specjax.io import checkpoint
  base = specjax.generate(tiny4, PROMPTS[:2], max_new_tokens=16)
  forwards = {}
  for own in (0, 16):
    d = Eagle3.untrained(tiny4, seed=2, draft_vocab=16, own_head=own)
    path = checkpoint.save_drafter(tmp_path / f"eagle3-{own}.safetensors", d, tiny4)
    loaded = registry.make(f"eagle3:{path}")
    w = loaded.params["p"].get_value()
    assert loaded.fuse == d.fuse and loaded.capture == d.capture and set(w) == set(d.shapes())
    assert loaded.own_head == own and ("head" in w) == bool(own)
    g = specjax.generate(tiny4, PROMPTS[:2], max_new_tokens=16, drafter=loaded)
    assert g.token_ids == base.token_ids
    forwards[own] = g.target_forwards
  assert forwards[0] == forwards[16]
  with pytest.raises(ValueError, match="own head"):
    Eagle3.for_target(tiny4, draft_vocab=16, own_head=8).validate()
  with pytest.raises(ValueError, match="holds a"):
    registry.make(f"eagle:{path}")
  with pytest.raises(ValueError, match="fused layers"):
    dataclasses.replace(loaded, fuse=(1, 2, 9), trained_for="").check_target(tiny4)


def test_captured_features_are_the_target_layers(tiny_layers):
  t, train, _, seqs = tiny_layers
  cap = eagle.fuse_layers(t.cfg.layers)
  ids = seqs[0]["prompt"] + seqs[0]["answer"]
  out = t.model(jnp.asarray([ids]), jnp.arange(len(ids))[None], None, causal_mask(1, len(ids)), capture=cap)
  first = train.seq == 0                                      # seqs[0]
  assert train.layers.shape == (len(train), 3, t.cfg.hidden)
  for j, i in enumerate(cap):
    np.testing.assert_allclose(np.asarray(train.layers[first, j], np.float32), np.asarray(out.layer_hidden[i][0]),
                               rtol=1e-2, atol=1e-2)           # stored in bfloat16


def test_eagle3_training_lowers_the_loss_and_the_drafter_is_lossless(tiny_layers, tmp_path):
  t, train, held, _ = tiny_layers
  c = loop.TrainConfig(**dict(CFG, drafter="eagle3", heads=3)).resolved()
  recipe = loop.RECIPES["eagle3"](t, train, held, c)
  assert recipe.capture_for(t.cfg, c) == eagle.fuse_layers(t.cfg.layers)
  batch = recipe.batch(np.arange(8), 0)
  before = float(recipe.loss(recipe.init(), recipe.consts, batch)[0])
  d, summary = loop.fit(t, train, held, c, tmp_path / "run", progress=False, log=lambda m: None)
  after = float(recipe.loss(d.params["p"].get_value(), recipe.consts, batch)[0])
  assert isinstance(d, Eagle3) and d.capture == eagle.fuse_layers(t.cfg.layers)
  assert c.own_head and d.own_head == len(recipe.vocab) and "head" in d.params["p"].get_value()
  # Soft targets: the loss's floor is the targets' own entropy (the draft equal to the target); the
  # starting draft (the target's last layer over its fused high layer) already predicts well.
  from specjax.models.llama import rms_norm
  f = np.asarray(rms_norm(batch["h"], recipe.consts["norm_w"], t.cfg.norm_eps), np.float64)
  logq = _log_softmax(f @ np.asarray(recipe.consts["head_w"], np.float64))[:, 1:]            # the target at t+1
  ent = -(np.exp(logq) * logq).sum(-1)
  scored = np.asarray(batch["valid"])[:, :-1] & (np.asarray(batch["top_idx"])[:, :-1, 0] >= 0)
  floor = sum(0.8 ** i * ent[:, i:][scored[:, i:]].mean() for i in range(c.heads))
  assert after - floor < 0.7 * (before - floor) and summary["tau"] > 1.3
  base = specjax.generate(t, PROMPTS, max_new_tokens=30)
  assert specjax.generate(t, PROMPTS, max_new_tokens=30, drafter=d).token_ids == base.token_ids
  with pytest.raises(ValueError, match="captured layers"):
    loop.RECIPES["eagle3"](t, *loop_features_without_layers(tiny_layers), c)


def loop_features_without_layers(tiny_layers):
  _, train, held, _ = tiny_layers
  return dataclasses.replace(train, layers=None), held


# ------------------------------------------------------------------ the shipped checkpoint, on the default model

@pytest.mark.parametrize("name", ["eagle", "eagle3"])
def test_shipped_checkpoint_is_lossless_on_default_model(default_target, name):
  from test_clover import REAL_PROMPTS
  d = registry.make(name)
  assert d.trained_for and d.draft_vocab == 4096
  for n, opts in ((1, {}), (4, {}), (4, dict(depth=6, top_k=6, nodes=24))):
    base = specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=48)
    g = specjax.generate(default_target, REAL_PROMPTS[:n], max_new_tokens=48, drafter=name, **opts)
    assert g.token_ids == base.token_ids
  assert len(specjax.api.encode_prompts(default_target, REAL_PROMPTS[2:3], True)[0]) > 64
  assert sum(g.new_tokens) / sum(g.target_forwards) > 1.3      # the trained draft is accepted
