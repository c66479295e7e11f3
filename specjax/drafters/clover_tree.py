"""Clover's draft trees, built inside the program as the authors' code builds them (XiaoBin1992/clover,
`clover/model/clover2.py`; `Clover` in clover.py drafts with them). The heads are passed in: any object
with `first(p, u, e_root, ctx) -> (out, state)` and `step(p, state, e, ctx) -> (out, state)` (clover.Heads).

- `grow` (`tree="dynamic"`), `beam_genrate`'s rule: each frontier node's top TOP = 20 candidates, p
  renormalised over them; child k is kept while the mass of children 0..k (itself included) is <= top-p
  (TOP_P) and, for Clover-1, while p >= p_top1 / 4; every kept node joins the tree and the next frontier
  until a level's kept nodes fill the `nodes` left, whose best by joint probability end the tree.
- `grow_static` (`tree="static"`), `topK_genrate`: a fixed tree of rank paths; the public evaluation scripts
  (`gen_clo_answer_*_sp.py`) decode with EVAL_TREE (`topk_sample`, which selects `beam_genrate`, is never set).

Deviations from the authors' decoding:
- The public code samples its candidates when it samples (TOP, or top-10, drawn without replacement, with
  conditional probabilities); here they are the top ones at every temperature (one-hot q).
- `beam_genrate`'s last head lacks the guard that keeps the top child: there a node whose top child alone
  holds more than the top-p mass gets no child. Here the top child is always kept.
- Clover-1 has no public code: its rule is the README's (top-p, then a quarter of the top-1; the budget
  shared level by level), with Clover-2's renormalisation over TOP and the README figure's top-p 0.8.
- The public runs have 5 heads (EVAL_TREE is 5 deep); a 4-head drafter drops its two 5-deep nodes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from specjax.engine import tree as tree_lib

# The public evaluation's tree (`gen_clo_answer_*_sp.py` -> `topK_genrate` over `mc_sim_7b_63`, EAGLE-1's
# 25-node tree): rank paths, each node the rank-r child of its parent's head output.
EVAL_TREE = ((0,), (1,), (2,), (3,), (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0),
             (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0),
             (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 0, 0), (0, 0, 0, 0, 1))
TOP = 20          # `beam_genrate`'s token_count: the candidates per node its probabilities are renormalised over
# The token rule's top-p: Clover-2's `beam_genrate` (top_p_threldhold); Clover-1 has no public code, its README
# figure truncates at 0.8.
TOP_P = {1: 0.8, 2: 0.95}


def static_tree(depth: int, nodes: int) -> tree_lib.StaticTree:
  """The evaluation tree cut to `depth` heads and its first `nodes` nodes (breadth-first, ranks in order)."""
  return tree_lib.from_choices([c for c in EVAL_TREE if len(c) <= depth][:nodes])


def level_widths(depth: int, nodes: int) -> list[int]:
  """Most nodes per depth of the dynamic tree: the root has one frontier node; a level holds at most
  `nodes` (the budget) and TOP children of each frontier node."""
  out, m = [], 1
  for _ in range(depth):
    m = min(nodes, m * TOP)
    out.append(m)
  return out


def grow(heads, p, logits_fn, embed, u, root, ctx, *, depth: int, nodes: int, top_p: float,
         quarter: bool = False):
  """Builds each row's draft tree inside the program, by `beam_genrate`'s rule (Clover-2's public code;
  Clover-1's README describes the same with its quarter rule): level by level, every frontier node takes
  its TOP candidates' children that the token rule keeps (tree_lib.top_children); while the level's kept
  children fit in the nodes left they all join the tree and form the next frontier; the level that
  overflows keeps its best by joint probability and ends the tree.

  u [B, H] the augmented feature at the last committed entry; root [B] the root token; logits_fn:
  out [..., H] -> log-probabilities [..., N] over the draft vocabulary; embed: draft-vocab index ->
  (target id, embedding). Returns (tokens [B, 1+n], parent [B, 1+n], states [B, 1+n, H]: the head state
  each node's children were drawn from (the root's is 0)), n = min(nodes, sum(level_widths)). Slots the
  rule leaves empty have parent -1 and are never accepted."""
  B, H = u.shape
  out0, s0 = heads.first(p, u, embed(root[:, None])[1][:, 0], ctx)
  logp = logits_fn(out0)[:, None]                                                  # [B, 1, N]
  base = jnp.zeros((B, 1))
  par_state = s0[:, None]                                                          # states of the frontier
  par_index = jnp.zeros((B, 1), jnp.int32)                                         # their flat node index (0 = root)
  left = jnp.full((B,), nodes)                                                     # nodes the budget has left
  toks, joints, parents, states = [], [], [], []
  count = 1
  for d in range(depth):
    c = min(TOP, logp.shape[-1])
    idx, joint = tree_lib.top_children(logp, base, c, top_p, quarter)               # [B, M, c]
    M = idx.shape[1]
    w = min(nodes, M * c)
    top_joint, pick = jax.lax.top_k(joint.reshape(B, M * c), w)                     # [B, w], best first
    kept = jnp.sum(top_joint > -jnp.inf, 1)
    top_joint = jnp.where(jnp.arange(w)[None] < left[:, None], top_joint, -jnp.inf)
    left = jnp.where(kept >= left, 0, left - kept)                                  # an overflowing level ends the tree
    from_m = pick // c
    vidx = jnp.take_along_axis(idx.reshape(B, -1), pick, 1)
    tok, e = embed(vidx)
    s_par = jnp.take_along_axis(par_state, from_m[..., None], 1)
    toks.append(tok)
    joints.append(top_joint)
    parents.append(jnp.take_along_axis(par_index, from_m, 1))
    states.append(s_par)
    par_index = count + jnp.arange(w, dtype=jnp.int32)[None].repeat(B, 0)
    count += w
    base = top_joint
    if d + 1 < depth:
      out, par_state = heads.step(p, s_par, e, ctx)
      logp = logits_fn(out)
  out_tok, out_par, keep = tree_lib.keep_best(root, jnp.concatenate(toks, 1), jnp.concatenate(joints, 1),
                                              jnp.concatenate(parents, 1), nodes)
  st = jnp.concatenate(states, 1)
  out_states = jnp.concatenate([jnp.zeros((B, 1, H), st.dtype), jnp.take_along_axis(st, keep[..., None], 1)], 1)
  return out_tok, out_par, out_states


def grow_static(heads, p, logits_fn, embed, u, root, ctx, shape: tree_lib.StaticTree):
  """`topK_genrate` over a fixed tree: a node of rank path (r_1 .. r_d) is the r_d-th most likely child
  of its parent's head output. Arguments as `grow`; returns tokens [B, T] in `shape`'s node order."""
  out0, s0 = heads.first(p, u, embed(root[:, None])[1][:, 0], ctx)
  logp, s_par = logits_fn(out0)[:, None], s0[:, None]                             # one frontier node, the root
  level = [()]                                                                     # the frontier's rank paths
  toks = [root[:, None].astype(jnp.int32)]
  for d in range(1, shape.max_depth + 1):
    mine = [c for c in shape.choices if len(c) == d]
    idx = jax.lax.top_k(logp, 1 + max(c[-1] for c in mine))[1]                      # [B, M, k]
    tok, e = embed(idx[:, [level.index(c[:-1]) for c in mine], [c[-1] for c in mine]])   # [B, m]
    toks.append(tok.astype(jnp.int32))
    grown = [i for i, c in enumerate(mine) if any(x[:-1] == c for x in shape.choices)]   # nodes with children
    if grown:
      out, s_par = heads.step(p, s_par[:, [level.index(mine[i][:-1]) for i in grown]], e[:, grown], ctx)
      logp, level = logits_fn(out), [mine[i] for i in grown]
  return jnp.concatenate(toks, 1)
