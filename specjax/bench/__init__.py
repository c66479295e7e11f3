"""Benchmark harness: autoregressive baseline vs drafters (and optional peers) on Spec-Bench prompts.

run.py (selection, the crash-safe run), aggregate.py (figures), report.py (results.md, speedup.png, the
machine), peers.py (Hugging Face transformers on the same weights, worker-process peers), llamacpp.py
(llama.cpp on the same GGUF)."""
from specjax.bench.run import Prompt, read_prompts, run_bench, select

__all__ = ["Prompt", "read_prompts", "run_bench", "select"]
