"""Lossless sampling: the distribution of the first two generated tokens equals exact autoregressive
probabilities, for deterministic candidates (prompt lookup, lookahead) and for sampled candidates
with a draft distribution q (a random drafter with sibling samples).

Test: chi-squared goodness of fit over the joint (x1, x2) outcomes (bins with expected count < 5
merged), N = 4000 independent rows of one batch; pass if p > 1e-3. Power check: the same samples
against a slightly wrong distribution (temperature off by 30%) must be rejected.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import specjax
from specjax.drafters.base import Drafter
from specjax.engine import accept as accept_lib
from specjax.engine import tree as tree_lib
from specjax.models.llama import causal_mask
from specjax.testing import tiny_target

V = 12
N = 4000
PROMPT = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3]


@pytest.fixture(scope="module")
def small():
  return tiny_target(seed=5, scale=12.0, vocab=V, eos_id=999)


def exact_joint(target, temperature, top_k=None, top_p=None):
  """[V, V] exact probabilities of (x1, x2) under autoregressive sampling."""
  seqs = jnp.asarray([PROMPT + [a] for a in range(V)])
  T = seqs.shape[1]
  logits = target.model(seqs, jnp.broadcast_to(jnp.arange(T), seqs.shape), None, causal_mask(V, T)).logits
  p1 = accept_lib.target_probs(logits[0, -2], temperature, top_k, top_p)
  p2 = accept_lib.target_probs(logits[:, -1], temperature, top_k, top_p)
  j = np.asarray(p1[:, None] * p2, np.float64)
  return j / j.sum()


def empirical(target, drafter, temperature, top_k=None, top_p=None, seed=0, **opts):
  g = specjax.generate(target, [PROMPT] * N, max_new_tokens=2, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, drafter=drafter, **opts)
  counts = np.zeros((V, V))
  for ids in g.token_ids:
    counts[ids[0], ids[1]] += 1
  return counts, g


def chi2_p(counts, probs):
  c, e = counts.ravel(), probs.ravel() * counts.sum()
  big = e >= 5
  obs = np.append(c[big], c[~big].sum())
  exp = np.append(e[big], e[~big].sum())
  keep = exp > 0
  assert obs[~keep].sum() == 0, "samples where the exact probability is zero"
  return stats.chisquare(obs[keep], exp[keep]).pvalue


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

  def init(self, ctx):
    return jax.random.key(self.seed)

  def propose(self, key, ctx):
    B = ctx.tokens.shape[0]
    key, k = jax.random.split(key)
    q = self.q()
    draws = jax.random.categorical(k, jnp.log(q), shape=(B, 3)).astype(jnp.int32)
    tree = self.shape.draft(jnp.concatenate([ctx.root_token()[:, None], draws], 1))
    probs = jnp.broadcast_to(q, (B, 4, V))
    return dataclasses.replace(tree, draft_probs=probs), key


CASES = [
    ("none", {}),
    ("pld", dict(num_tokens=2, branches=2)),
    ("lookahead", dict(window=2, ngram=3, guesses=2)),
    (RandomTree(), {}),
]


@pytest.mark.parametrize("drafter,opts", CASES, ids=["none", "pld", "lookahead", "sampled-q"])
def test_sampling_matches_exact_probabilities(small, drafter, opts):
  exact = exact_joint(small, 1.0)
  counts, g = empirical(small, drafter, 1.0, **opts)
  assert g.lossless
  assert chi2_p(counts, exact) > 1e-3
  wrong = exact_joint(small, 1.3)
  assert chi2_p(counts, wrong) < 1e-3, "the test has no power to see a wrong distribution"
  if drafter != "none":
    assert sum(g.target_forwards) < sum(g.new_tokens), "drafts were never accepted; test exercises nothing"


def test_sampling_with_top_k_top_p_matches(small):
  exact = exact_joint(small, 0.8, top_k=6, top_p=0.9)
  counts, _ = empirical(small, "pld", 0.8, top_k=6, top_p=0.9, num_tokens=2, branches=2)
  assert chi2_p(counts, exact) > 1e-3


def test_seeds_reproduce_and_differ(small):
  a = specjax.generate(small, [PROMPT] * 4, max_new_tokens=8, temperature=1.0, seed=3, drafter="pld")
  b = specjax.generate(small, [PROMPT] * 4, max_new_tokens=8, temperature=1.0, seed=3, drafter="pld")
  c = specjax.generate(small, [PROMPT] * 4, max_new_tokens=8, temperature=1.0, seed=4, drafter="pld")
  assert a.token_ids == b.token_ids
  assert a.token_ids != c.token_ids


def test_typical_acceptance_is_labelled_lossy(small):
  g = specjax.generate(small, [PROMPT], max_new_tokens=4, temperature=0.7, acceptance="typical", drafter="pld")
  assert g.acceptance == "typical" and not g.lossless
