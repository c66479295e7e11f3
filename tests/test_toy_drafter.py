"""Adding a drafter touches only its own file and one registry call: a toy drafter defined here (it
proposes the root token repeated, a chain of `num_tokens`), registered with `registry.register`, runs
through the public API by name and is lossless at batch 1 and 4 on a tiny random model."""
import dataclasses

import pytest

import specjax
from specjax.drafters import registry
from specjax.engine import tree as tree_lib
from specjax.protocol import Drafter, check_option_types
from specjax.testing import tiny_target


@dataclasses.dataclass(frozen=True)
class Repeat(Drafter):
  num_tokens: int = 3        # chain length
  name = "toy-repeat"

  def validate(self):
    check_option_types(self)
    if self.num_tokens < 1:
      raise ValueError(f"toy-repeat: num_tokens must be >= 1, got {self.num_tokens}")

  @property
  def num_nodes(self):
    return self.num_tokens + 1

  @property
  def max_depth(self):
    return self.num_tokens

  def propose(self, m, state, ctx):
    import jax.numpy as jnp
    root = ctx.root_token()[:, None]
    return tree_lib.chain(self.num_tokens).draft(jnp.repeat(root, self.num_tokens + 1, 1)), state


@pytest.fixture(scope="module")
def toy():
  registry.register("toy-repeat", Repeat)           # the one registry line
  yield
  del registry._CLASSES["toy-repeat"]


@pytest.mark.parametrize("prompts", [[[5, 9, 13, 5, 9]], [[5, 9, 13, 5, 9], [7, 3, 3, 3, 3, 21], [11], [30, 31, 30]]])
def test_toy_drafter_is_lossless(toy, prompts):
  t = tiny_target(seed=1, scale=8.0)
  base = specjax.generate(t, prompts, max_new_tokens=16).token_ids
  g = specjax.generate(t, prompts, max_new_tokens=16, drafter="toy-repeat", num_tokens=2)
  assert g.token_ids == base
  assert "toy-repeat" in registry.names()
  with pytest.raises(ValueError, match="no option"):
    registry.make("toy-repeat", nodes=3)
