"""The autoregressive baseline as a drafter. The drafter interface itself is `specjax.protocol`."""
from __future__ import annotations

import dataclasses

from specjax.engine import tree as tree_lib
from specjax.protocol import Drafter


@dataclasses.dataclass(frozen=True)
class NoDrafter(Drafter):
  """Autoregressive decoding: a one-node tree (just the root)."""
  name = "none"

  @property
  def num_nodes(self) -> int:
    return 1

  @property
  def max_depth(self) -> int:
    return 0

  def propose(self, m, state, ctx):
    return tree_lib.chain(0).draft(ctx.root_token()[:, None]), state
