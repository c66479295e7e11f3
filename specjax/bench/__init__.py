"""Benchmark harness: autoregressive baseline vs drafters (and optional peers) on Spec-Bench prompts."""
from specjax.bench.harness import Prompt, read_prompts, run_bench, select

__all__ = ["Prompt", "read_prompts", "run_bench", "select"]
