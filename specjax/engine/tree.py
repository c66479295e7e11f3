"""Draft trees: the candidates one target forward verifies.

Node 0 is the root (the last committed token). Every other node has a parent earlier in the order
(topological order), so a depth-first or breadth-first listing both work. Nodes with parent -1 other
than the root are not candidates: they ride along in the forward for a drafter's own use (lookahead's
Jacobi window) and are never accepted.
"""
from __future__ import annotations

import dataclasses
import heapq
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax.protocol import DraftTree


@dataclasses.dataclass(frozen=True, eq=False)
class StaticTree:
  """A tree shape fixed at trace time (numpy). parent [T] (-1 at the root), depth [T], mask [T, T],
  paths: root-to-leaf node lists; choices: Medusa-style rank paths, one per non-root node."""
  parent: np.ndarray
  depth: np.ndarray
  mask: np.ndarray
  choices: tuple[tuple[int, ...], ...]

  @property
  def size(self) -> int:
    return len(self.parent)

  @property
  def max_depth(self) -> int:
    return int(self.depth.max())

  @property
  def paths(self) -> list[list[int]]:
    leaves = sorted(set(range(self.size)) - set(int(p) for p in self.parent[1:]))
    return [list(np.flatnonzero(self.mask[leaf])) for leaf in leaves]

  def draft(self, tokens: jax.Array) -> DraftTree:
    """Wraps tokens [B, T] laid out in this tree's node order."""
    B = tokens.shape[0]
    bc = lambda a: jnp.broadcast_to(jnp.asarray(a), (B,) + a.shape)
    return DraftTree(tokens.astype(jnp.int32), bc(self.parent.astype(np.int32)), bc(self.depth.astype(np.int32)),
                     bc(self.mask), None, self.max_depth)

  def __hash__(self):
    return hash(self.choices)

  def __eq__(self, other):
    return isinstance(other, StaticTree) and self.choices == other.choices


def from_choices(choices: Sequence[Sequence[int]]) -> StaticTree:
  """Builds a tree from Medusa-style choices: each entry is a path of ranks, e.g. (0,), (0, 1), (1,).

  Node order: by depth, then lexicographically, so parents precede children and rank-0 siblings
  come first.
  """
  choices = sorted({tuple(int(r) for r in c) for c in choices}, key=lambda c: (len(c), c))
  index = {(): 0}
  for c in choices:
    if any(r < 0 for r in c) or not c:
      raise ValueError(f"invalid tree choice {c}: ranks must be >= 0 and the path non-empty")
    if c[:-1] not in index:
      raise ValueError(f"tree choice {c} has no parent {c[:-1]} in the list")
    index[c] = len(index)
  T = len(index)
  parent = np.full(T, -1, np.int64)
  depth = np.zeros(T, np.int64)
  mask = np.eye(T, dtype=bool)
  for c, i in index.items():
    if c:
      parent[i] = index[c[:-1]]
      depth[i] = len(c)
      mask[i] |= mask[parent[i]]
  return StaticTree(parent, depth, mask, tuple(choices))


def chain(n: int) -> StaticTree:
  """Root plus a chain of n candidates (rank 0 at each depth)."""
  return from_choices([(0,) * d for d in range(1, n + 1)])


def grow(acceptance: np.ndarray, budget: int) -> StaticTree:
  """Greedily grows the static tree of `budget` non-root nodes that maximises expected accepted length.

  acceptance[d, k]: measured probability that the rank-k candidate at depth d+1 is the accepted one
  (given its parent was accepted). A node's value is the product of its path's rates; the expected
  accepted length of a tree is the sum of its nodes' values, so adding nodes best-first is optimal
  among trees reachable by single additions (Medusa's and Sequoia's construction).
  """
  acc = np.asarray(acceptance, np.float64)
  D, K = acc.shape
  chosen: list[tuple[int, ...]] = []
  heap = [(-acc[0, k], (k,)) for k in range(K)]
  heapq.heapify(heap)
  while heap and len(chosen) < budget:
    neg, c = heapq.heappop(heap)
    chosen.append(c)
    if len(c) < D:
      for k in range(K):
        heapq.heappush(heap, (neg * acc[len(c), k], c + (k,)))
  return from_choices(chosen)


def ancestors_from_parents(parent: jax.Array) -> tuple[jax.Array, jax.Array]:
  """For trees built inside the program: parent [B, T] (topological, -1 at the root) ->
  (mask [B, T, T] ancestor-or-self, depth [B, T])."""
  B, T = parent.shape
  eye = jnp.eye(T, dtype=bool)

  def body(t, mask):
    p = parent[:, t]
    inherited = jnp.where((p >= 0)[:, None], jnp.take_along_axis(mask, jnp.maximum(p, 0)[:, None, None], 1)[:, 0], False)
    return mask.at[:, t].set(inherited | eye[t])

  mask = jax.lax.fori_loop(0, T, body, jnp.broadcast_to(eye, (B, T, T)))
  return mask, mask.sum(-1).astype(jnp.int32) - 1


def acceptance_table(ranks: np.ndarray, kmax: int) -> np.ndarray:
  """ranks [N, D]: rank of the true next token in each depth's candidate list (kmax: absent).
  Returns [D, kmax]: P(rank at depth d == k | the true tokens of depths < d were all candidates),
  the per-depth rates `grow` builds trees from."""
  ranks = np.asarray(ranks)
  D = ranks.shape[1]
  out = np.zeros((D, kmax))
  for d in range(D):
    ok = np.all(ranks[:, :d] < kmax, 1)
    if ok.any():
      out[d] = np.bincount(ranks[ok, d], minlength=kmax + 1)[:kmax] / ok.sum()
  return out


def accepted_lengths(ranks: np.ndarray, shape: StaticTree) -> np.ndarray:
  """ranks [N, D] as above -> [N] candidates the static tree accepts at each position under greedy
  verification: the depth of the deepest node whose whole rank path matches (exact, not estimated)."""
  ranks = np.asarray(ranks)
  best = np.zeros(len(ranks), np.int64)
  for c in shape.choices:
    if len(c) > ranks.shape[1]:
      continue
    ok = np.all(ranks[:, :len(c)] == np.asarray(c)[None, :], 1)
    best = np.where(ok, np.maximum(best, len(c)), best)
  return best


# ------------------------------------------------------------------ dynamic trees (built inside the program)

def top_children(logp: jax.Array, base: jax.Array, children: int, top_p: float | None = None, quarter: bool = False):
  """Each frontier node's `children` most likely children. logp [B, M, N] their log-probabilities,
  base [B, M] the frontier nodes' joint log-probabilities (-inf: no node). Returns (idx [B, M, c]
  vocabulary indices, joint [B, M, c]: base + log p, -inf for children a rule drops).
  top_p None keeps every child (EAGLE-2). Otherwise Clover's token rule as its `beam_genrate` applies it:
  p is renormalised over the `children` candidates (a softmax over their logits), child k is kept while
  the mass of children 0..k, itself included, is at most top_p, and (quarter, Clover-1's README) while
  p >= p_top1 / 4; joint then adds the renormalised log p. The top child is always kept."""
  lp, idx = jax.lax.top_k(logp, children)
  alive = base[..., None] > -jnp.inf
  if top_p is not None:
    lp = jax.nn.log_softmax(lp, -1)
    pr = jnp.exp(lp)
    keep = jnp.cumsum(pr, -1) <= top_p
    if quarter:
      keep = keep & (pr >= pr[..., :1] / 4)
    alive = alive & keep.at[..., 0].set(True)
  return idx, jnp.where(alive, base[..., None] + lp, -jnp.inf)


def keep_best(root: jax.Array, tok: jax.Array, joint: jax.Array, parent: jax.Array, nodes: int):
  """The `nodes` best drafted nodes by joint log-probability, as a tree (EAGLE-2's global rerank).

  root [B] the root tokens; tok, joint, parent [B, F]: every drafted node in topological order,
  parent the flat index of its parent (0 = root, f + 1 = drafted node f). Returns (tokens [B, 1+n],
  parent [B, 1+n] (-1 for the root and for kept nodes whose joint is -inf: never accepted), keep [B, n]
  the kept nodes' flat indices), n = min(nodes, F). The kept set is ancestor-closed: a child's joint
  log-probability never exceeds its parent's (log p <= 0 in floating point too), and top_k puts the
  lower index, the parent, first on an exact tie."""
  B, F = tok.shape
  n = min(nodes, F)
  keep = jnp.sort(jax.lax.top_k(joint, n)[1], 1)                                   # flat order is topological
  new_pos = jnp.zeros((B, F + 1), jnp.int32).at[jnp.arange(B)[:, None], keep + 1].set(1 + jnp.arange(n)[None])
  alive = jnp.take_along_axis(joint, keep, 1) > -jnp.inf
  par = jnp.where(alive, jnp.take_along_axis(new_pos, jnp.take_along_axis(parent, keep, 1), 1), -1)
  out_tok = jnp.concatenate([root[:, None], jnp.take_along_axis(tok, keep, 1)], 1).astype(jnp.int32)
  return out_tok, jnp.concatenate([jnp.full((B, 1), -1, jnp.int32), par.astype(jnp.int32)], 1), keep
