"""The program layer, between the public API and the engine: everything one generation needs.

    program = Program(target)                        # the target's decode program (mesh: target.mesh)
    settings = Settings.make(drafter="pld", max_new_tokens=64)     # validated once, drafter built once
    g = program.generate(encode_prompts(target, ["Hi"], settings.chat), settings)

settings.py  Settings (sampling, seed, budget, drafter, chat, max tokens) and their checks
inputs.py    the target and prompts checked, text encoded to token ids
core.py      Program: preparation, the compiled-executable cache (specjax.process_cache), placement on a
             mesh, running, timing; Generation, what a call returns
auto.py      tree_budget="auto": step costs measured with the program, observed acceptance fed back
sharded.py   the program on a mesh: shardings, placing inputs, gathering outputs
divergence.py  where a greedy output leaves autoregressive decoding, and the target's logit gap there

The API (specjax.api), batch jobs (specjax.batch), the bench (specjax.bench) and training data
(specjax.train.data) generate through here; nothing here imports them.
"""
from specjax.program.core import BUCKET, Generation, Prepared, Program, Run, round_up
from specjax.program.divergence import divergence, first_diff, next_token_gap
from specjax.program.inputs import check_fits, check_target, encode_prompts
from specjax.program.settings import (MIN_TEMPERATURE, SEED_LIMIT, Settings, check_sampling, check_seed,
                                      check_tree_budget)

__all__ = ["BUCKET", "Generation", "MIN_TEMPERATURE", "Prepared", "Program", "Run", "SEED_LIMIT", "Settings",
           "check_fits", "check_sampling", "check_seed", "check_target", "check_tree_budget", "divergence",
           "encode_prompts", "first_diff", "next_token_gap", "round_up"]
