"""Lossless sampling: the distribution of the generated tokens equals exact autoregressive
probabilities, for deterministic candidates (prompt lookup, lookahead, Medusa with random heads) and
for sampled candidates with a draft distribution q (a random drafter with sibling samples, and a
tiny draft model sampling its chain and a sibling at every depth).

One batch mixes two prompts of different lengths (rows alternate A, B); each group is tested against
its own exact distribution, over the joint of (x1, x2) and over the joint of (x3, x4) — the latter
is produced after at least one committed step, so it reads the committed KV cache and the drafter's
state after `update`. Exact probabilities enumerate all V^3 continuations x1 x2 x3 of a prompt in one
cache-free forward and multiply the autoregressive conditionals; the sampling distribution
(temperature, top-k, top-p) is rebuilt here in plain numpy, independently of `accept.target_probs`.

Test: chi-squared goodness of fit (bins with expected count < 5 merged), N = 4000 rows of one batch
(2000 a group), fixed seeds; pass if p > 1e-3. Power checks: the same samples against a slightly
wrong distribution (temperature off by 30%) must be rejected, and so must samples from deliberately
broken acceptance rules monkeypatched into the engine (mutation checks).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import specjax
from specjax.process_cache import CACHE
import specjax.api
from specjax.drafters.cerberus import Cerberus
from specjax.drafters.adadecode import AdaDecode
from specjax.drafters.clover import Clover1, Clover2
from specjax.drafters.draft_model import DraftModel, SelfSpec, Staged
from specjax.drafters.eagle import Eagle, Eagle3
from specjax.drafters.early_exit import EarlyExit
from specjax.drafters.hidden_transfer import HiddenTransfer
from specjax.drafters.medusa import Medusa
from specjax.drafters.parallelspec import ParallelSpec
from specjax.engine import accept as accept_lib
from specjax.engine import tree as tree_lib
from specjax.models.llama import causal_mask
from specjax.protocol import Acceptance, Drafter
from specjax.testing import tiny_target

V = 12
N = 4000
PROMPT_A = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3]
PROMPT_B = [5, 11, 11, 11, 7, 7, 7]       # different length; a repetitive tail prompt lookup can match
PROMPTS = (PROMPT_A, PROMPT_B)
ALPHA = 1e-3


@pytest.fixture(scope="module")
def small():
  return tiny_target(seed=5, scale=12.0, vocab=V, eos_id=999)


# ------------------------------------------------------------------ exact reference (plain numpy)

def reference_probs(logits, temperature, top_k=None, top_p=None):
  """[..., V] logits -> sampling distribution, float64, written independently of the engine:
  sort descending, keep the top_k, softmax, keep the smallest prefix whose mass reaches top_p
  (a token stays if the mass strictly before it is < top_p), renormalise, unsort."""
  x = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-x, axis=-1, kind="stable")
  xs = np.take_along_axis(x, order, -1)
  if top_k is not None:
    xs[..., top_k:] = -np.inf
  ps = np.exp(xs - xs[..., :1])
  ps /= ps.sum(-1, keepdims=True)
  if top_p is not None:
    before = np.cumsum(ps, -1) - ps
    ps = np.where(before < top_p, ps, 0.0)
    ps /= ps.sum(-1, keepdims=True)
  out = np.zeros_like(ps)
  np.put_along_axis(out, order, ps, -1)
  return out


_LOGITS = {}


def continuation_logits(target, prompt):
  """[V, V, V, 4, V] float64: logits after prompt, prompt+a, prompt+ab, prompt+abc for every a, b, c
  (one cache-free forward over all V^3 sequences prompt + a b c)."""
  key = (id(target), tuple(prompt))
  if key not in _LOGITS or _LOGITS[key][0] is not target:
    abc = np.stack(np.meshgrid(*[np.arange(V)] * 3, indexing="ij"), -1).reshape(-1, 3)
    seqs = jnp.asarray(np.concatenate([np.broadcast_to(prompt, (len(abc), len(prompt))), abc], 1), jnp.int32)
    B, T = seqs.shape
    logits = target.model(seqs, jnp.broadcast_to(jnp.arange(T), (B, T)), None, causal_mask(B, T)).logits
    _LOGITS[key] = target, np.asarray(logits[:, -4:], np.float64).reshape(V, V, V, 4, V)
  return _LOGITS[key][1]


def exact_joint4(target, prompt, temperature, top_k=None, top_p=None):
  """[V, V, V, V] exact probability of the first four generated tokens (x1, x2, x3, x4)."""
  p = reference_probs(continuation_logits(target, prompt), temperature, top_k, top_p)
  p1 = p[0, 0, 0, 0]                # after the prompt (a, b, c not yet seen)
  p2 = p[:, 0, 0, 1]                # [a, x2]
  p3 = p[:, :, 0, 2]                # [a, b, x3]
  p4 = p[:, :, :, 3]                # [a, b, c, x4]
  j = p1[:, None, None, None] * p2[:, :, None, None] * p3[:, :, :, None] * p4
  return j / j.sum()


def exact_pairs(target, prompt, temperature, top_k=None, top_p=None):
  """{"x1x2": [V, V], "x3x4": [V, V]} exact joints of the first and second pair of tokens."""
  j = exact_joint4(target, prompt, temperature, top_k, top_p)
  return {"x1x2": j.sum((2, 3)), "x3x4": j.sum((0, 1))}


# ------------------------------------------------------------------ sampling and the test

def mixed_batch():
  """N rows alternating prompt A and prompt B."""
  return [PROMPTS[i % 2] for i in range(N)]


def empirical(target, drafter, temperature, top_k=None, top_p=None, seed=0, **opts):
  """Generates 4 tokens for the mixed batch; returns (per group {"x1x2", "x3x4"} counts, generation)."""
  g = specjax.generate(target, mixed_batch(), max_new_tokens=4, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, drafter=drafter, **opts)
  ids = np.asarray(g.token_ids)
  assert ids.shape == (N, 4)
  groups = []
  for grp in range(2):
    x = ids[grp::2]
    c12, c34 = np.zeros((V, V)), np.zeros((V, V))
    np.add.at(c12, (x[:, 0], x[:, 1]), 1)
    np.add.at(c34, (x[:, 2], x[:, 3]), 1)
    groups.append({"x1x2": c12, "x3x4": c34})
  return groups, g


def chi2_p(counts, probs):
  c, e = counts.ravel(), probs.ravel() * counts.sum()
  big = e >= 5
  obs = np.append(c[big], c[~big].sum())
  exp = np.append(e[big], e[~big].sum())
  keep = exp > 0
  assert obs[~keep].sum() == 0, "samples where the exact probability is zero"
  return stats.chisquare(obs[keep], exp[keep]).pvalue


def p_values(target, groups, temperature, top_k=None, top_p=None):
  """{("A"|"B", "x1x2"|"x3x4"): p-value} of each group against its own prompt's exact joints."""
  out = {}
  for name, prompt, counts in zip("AB", PROMPTS, groups):
    exact = exact_pairs(target, prompt, temperature, top_k, top_p)
    for k in ("x1x2", "x3x4"):
      out[name, k] = chi2_p(counts[k], exact[k])
  return out


def assert_accepts_drafts(g):
  """Both groups accepted drafts at some step, so the tested tokens came through verification."""
  fw, new = np.asarray(g.target_forwards), np.asarray(g.new_tokens)
  for grp in range(2):
    assert fw[grp::2].sum() < new[grp::2].sum(), f"group {'AB'[grp]}: drafts were never accepted"


# ------------------------------------------------------------------ drafters

@dataclasses.dataclass(frozen=True)
class RandomTree(Drafter):
  """Proposes two sampled children of the root and one grandchild, all drawn from a fixed q that
  is unrelated to the target, so both acceptance and residual resampling are exercised."""
  seed: int = 0
  name = "random-tree"

  @property
  def shape(self):
    return tree_lib.from_choices([(0,), (1,), (0, 0)])

  @property
  def num_nodes(self):
    return 4

  @property
  def max_depth(self):
    return 2

  def q(self):
    r = np.random.default_rng(self.seed).dirichlet(np.ones(V))
    return jnp.asarray(0.5 * r + 0.5 / V, jnp.float32)

  def init(self, m, ctx, prefill):
    return jax.random.key(self.seed)

  def propose(self, m, key, ctx):
    B = ctx.tokens.shape[0]
    key, k = jax.random.split(key)
    q = self.q()
    draws = jax.random.categorical(k, jnp.log(q), shape=(B, 3)).astype(jnp.int32)
    tree = self.shape.draft(jnp.concatenate([ctx.root_token()[:, None], draws], 1))
    probs = jnp.broadcast_to(q, (B, 4, V))
    return dataclasses.replace(tree, draft_probs=probs), key


def make_drafter(name, target):
  """(drafter, options) for a case name; Medusa needs the target, so it is built here."""
  if name == "none":
    return "none", {}
  if name == "pld":
    return "pld", dict(num_tokens=2, branches=2)
  if name == "lookahead":
    return "lookahead", dict(window=2, ngram=3, guesses=2)
  if name == "sampled-q":
    return RandomTree(), {}
  if name == "medusa":
    return Medusa.untrained(target, seed=1, nodes=6, draft_vocab=8), {}
  if name in ("clover", "clover2"):
    cls = Clover1 if name == "clover" else Clover2
    return cls.untrained(target, seed=1, nodes=6, draft_vocab=8), {}
  if name == "draft-model-q":      # an unrelated tiny draft sampling its chain (and a sibling) from its q
    draft = tiny_target(seed=7, scale=6.0, vocab=V, eos_id=999)
    return DraftModel.from_target(draft, gamma=2, width=2, temperature=1.0), {}
  if name == "eagle":
    return Eagle.untrained(target, seed=1, depth=3, top_k=3, nodes=6, draft_vocab=8), {}
  if name == "eagle3":
    return Eagle3.untrained(target, seed=1, depth=3, top_k=3, nodes=6, draft_vocab=8), {}
  if name == "parallelspec":
    return ParallelSpec.untrained(target, seed=1, depth=3, nodes=6, draft_vocab=8), {}
  if name == "cerberus":             # a gate that stops about half the rows, corrected by each row's record (a
    # recorded hit worth turns `cerberus.drafts` on): drafted and autoregressive steps mix
    d = Cerberus.untrained(target, seed=1, nodes=6, draft_vocab=8, gate_bias=0.0)
    return dataclasses.replace(d, heldout_tau=(("6", 2.0),), hit_rate=0.5), {}
  if name == "self-spec":
    return SelfSpec(exit_layer=1, gamma=2, width=2), {}
  if name == "staged":
    return Staged(exit_layer=1, gamma=2, lookup=2), {}
  if name == "early-exit":
    return EarlyExit.untrained(target, seed=1, exit_layer=1, gamma=2), {}
  if name == "adadecode":          # a threshold at which some steps draft and some do not
    return AdaDecode.untrained(target, seed=1, exit_layer=1, gamma=2, threshold=0.3), {}
  if name == "hidden-transfer":
    return HiddenTransfer.untrained(target, seed=1, transfer_layer=1, nodes=6, draft_vocab=8), {}
  raise KeyError(name)


CASES = ["none", "pld", "lookahead", "sampled-q", "medusa", "clover", "clover2", "eagle", "eagle3", "draft-model-q",
         "self-spec", "staged", "early-exit", "parallelspec", "cerberus", "adadecode", "hidden-transfer"]


def test_cases_cover_every_registered_drafter():
  from specjax.drafters import registry
  covered = {"sampled-q": None, "draft-model-q": "draft-model"}
  assert {covered.get(c, c) for c in CASES} - {None} == set(registry.names())


# ------------------------------------------------------------------ tests

def test_reference_probs_agree_with_engine():
  """The numpy reference and the engine's target_probs describe the same distribution (a cheap
  direct check; the statistical tests below use only the reference)."""
  logits = np.random.default_rng(0).normal(size=(64, V)) * 3
  for t, k, p in [(1.0, None, None), (0.8, 6, 0.9), (1.0, None, 0.8), (1.3, 3, None)]:
    want = reference_probs(logits, t, k, p)
    got = np.asarray(accept_lib.target_probs(jnp.asarray(logits, jnp.float32), t, k, p), np.float64)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_sampling_matches_exact_probabilities(small, case):
  drafter, opts = make_drafter(case, small)
  groups, g = empirical(small, drafter, 1.0, **opts)
  assert g.lossless
  ps = p_values(small, groups, 1.0)
  print(case, {k: f"{v:.3g}" for k, v in ps.items()})
  assert min(ps.values()) > ALPHA, ps
  wrong = p_values(small, groups, 1.3)
  print(case, "T=1.3", {k: f"{v:.3g}" for k, v in wrong.items()})
  assert max(wrong.values()) < ALPHA, f"the test has no power to see a wrong distribution: {wrong}"
  if case != "none":
    assert_accepts_drafts(g)


@pytest.mark.parametrize("case,temperature,top_k,top_p", [("pld", 0.8, 6, 0.9), ("sampled-q", 1.0, None, 0.8)])
def test_sampling_with_top_k_top_p_matches(small, case, temperature, top_k, top_p):
  drafter, opts = make_drafter(case, small)
  groups, g = empirical(small, drafter, temperature, top_k=top_k, top_p=top_p, seed=1, **opts)
  ps = p_values(small, groups, temperature, top_k, top_p)
  print(case, temperature, top_k, top_p, {k: f"{v:.3g}" for k, v in ps.items()})
  assert min(ps.values()) > ALPHA, ps
  assert_accepts_drafts(g)
  # Without the truncation the reference is wrong and the test must see it.
  full = p_values(small, groups, temperature)
  assert min(full.values()) < ALPHA, full


# ------------------------------------------------------------------ sibling draws

def _first_token_counts(logits, q, without_replacement: bool, n: int, seed: int) -> np.ndarray:
  """Counts of the first generated token after a root with two sampled children, each reported as drawn
  from q, over n independent rows of `accept.sample`."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  a = jax.random.categorical(k1, jnp.log(q), shape=(n,)).astype(jnp.int32)
  if without_replacement:       # the second child is q's draw among the tokens other than the first
    g = jax.random.gumbel(k2, (n, V))
    b = jnp.argmax(jnp.where(jax.nn.one_hot(a, V, dtype=bool), -jnp.inf, jnp.log(q) + g), -1).astype(jnp.int32)
  else:
    b = jax.random.categorical(k2, jnp.log(q), shape=(n,)).astype(jnp.int32)
  tree = tree_lib.from_choices([(0,), (1,)]).draft(jnp.stack([jnp.zeros(n, jnp.int32), a, b], 1))
  tree = dataclasses.replace(tree, draft_probs=jnp.broadcast_to(q, (n, 3, V)))
  acc = jax.jit(lambda lg, t, k: accept_lib.sample(lg, t, k, temperature=1.0))(jnp.broadcast_to(logits, (n, 3, V)),
                                                                              tree, k3)
  first = jnp.where(acc.n >= 1, jnp.take_along_axis(tree.tokens, acc.path[:, 1:2], 1)[:, 0], acc.bonus)
  return np.bincount(np.asarray(first), minlength=V)


def test_sampled_siblings_must_be_iid_draws_from_q():
  """The residual rule is exact only when sampled siblings are independent draws from their reported q
  (protocol.DraftTree). A drafter drawing siblings WITHOUT replacement while reporting q biases the output
  by a few standard errors at N = 4000 (invisible to the tests above); at 200k rows of the rule alone the
  bias is unmistakable, and i.i.d. siblings pass."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=V) * 1.5, jnp.float32)
  q = jnp.asarray(rng.dirichlet(np.ones(V)) * 0.6 + 0.4 / V, jnp.float32)
  p = reference_probs(np.asarray(logits), 1.0)
  pval = lambda c: stats.chisquare(c, p / p.sum() * c.sum()).pvalue
  assert pval(_first_token_counts(logits, q, False, 200_000, 0)) > ALPHA
  assert pval(_first_token_counts(logits, q, True, 200_000, 0)) < 1e-10


# ------------------------------------------------------------------ mutation checks

def broken_sample(mutation):
  """A copy of `accept.sample` with one deliberate bug:
  "q-residual-p": after rejecting a sampled candidate, continue from p instead of max(0, p - q);
  "onehot-keep-x": after rejecting a deterministic candidate x, do not zero p(x);
  "bonus-from-p": draw the bonus from the target's p at the last accepted node, not the residual."""
  calls = []

  def sample(logits, tree, key, *, temperature, top_k=None, top_p=None):
    calls.append(1)
    p = accept_lib.target_probs(logits, temperature, top_k, top_p)
    B, T, _ = p.shape
    k_u, k_bonus = jax.random.split(key)
    u = jax.random.uniform(k_u, (B, T))
    rows = jnp.arange(B)

    def step(carry, t):
      cur, resid = carry
      x = tree.tokens[:, t]
      live = tree.parent[:, t] == cur
      px = resid[rows, x]
      if tree.draft_probs is None:
        ratio = px
        rejected = resid if mutation == "onehot-keep-x" else resid.at[rows, x].set(0.0)
      else:
        q = tree.draft_probs[:, t]
        ratio = jnp.minimum(1.0, px / jnp.maximum(q[rows, x], 1e-30))
        rejected = resid if mutation == "q-residual-p" else jnp.maximum(resid - q, 0.0)
      rejected = rejected / jnp.maximum(rejected.sum(-1, keepdims=True), 1e-30)
      accept = live & (u[:, t] < ratio)
      resid = jnp.where(accept[:, None], p[:, t], jnp.where(live[:, None], rejected, resid))
      cur = jnp.where(accept, t, cur)
      return (cur, resid), None

    (cur, resid), _ = jax.lax.scan(step, (jnp.zeros(B, jnp.int32), p[:, 0]), jnp.arange(1, T))
    if mutation == "bonus-from-p":
      resid = jnp.take_along_axis(p, cur[:, None, None], 1)[:, 0]
    bonus = jax.random.categorical(k_bonus, jnp.log(resid)).astype(jnp.int32)
    return Acceptance(accept_lib._path_to(tree, cur), jnp.take_along_axis(tree.depth, cur[:, None], 1)[:, 0], bonus)

  return sample, calls


@pytest.mark.parametrize("mutation,case", [("q-residual-p", "sampled-q"), ("onehot-keep-x", "pld"),
                                           ("bonus-from-p", "medusa")])
def test_broken_acceptance_is_detected(small, monkeypatch, mutation, case):
  drafter, opts = make_drafter(case, small)
  rule, calls = broken_sample(mutation)
  CACHE.executables.clear()          # a compiled correct program must not be reused ...
  try:
    with monkeypatch.context() as mp:
      mp.setattr(accept_lib, "sample", rule)
      groups, _ = empirical(small, drafter, 1.0, **opts)
  finally:
    CACHE.executables.clear()        # ... nor the broken one leak into later tests
  assert calls, "the engine did not call accept_lib.sample; the mutation was never compiled in"
  ps = p_values(small, groups, 1.0)
  print(mutation, case, {k: f"{v:.3g}" for k, v in ps.items()})
  for pair in ("x1x2", "x3x4"):     # seen at the first tokens and after a committed step
    assert min(ps["A", pair], ps["B", pair]) < ALPHA, f"{pair} does not see the broken rule {mutation!r}: {ps}"


# ------------------------------------------------------------------ other

def test_seeds_reproduce_and_differ(small):
  a = specjax.generate(small, [PROMPT_A] * 4, max_new_tokens=8, temperature=1.0, seed=3, drafter="pld")
  b = specjax.generate(small, [PROMPT_A] * 4, max_new_tokens=8, temperature=1.0, seed=3, drafter="pld")
  c = specjax.generate(small, [PROMPT_A] * 4, max_new_tokens=8, temperature=1.0, seed=4, drafter="pld")
  assert a.token_ids == b.token_ids
  assert a.token_ids != c.token_ids


def test_typical_acceptance_is_labelled_lossy(small):
  g = specjax.generate(small, [PROMPT_A], max_new_tokens=4, temperature=0.7, acceptance="typical", drafter="pld")
  assert g.acceptance == "typical" and not g.lossless
