"""Benchmark harness: autoregressive baseline vs drafters (and optional peers) on Spec-Bench prompts.

run.py (the crash-safe, resumable run), plan.py (selection, every argument checked first), measure.py (methods
run, records made), aggregate.py (figures), report.py (results.md, speedup.png, the machine), peers.py (Hugging
Face transformers on the same weights, worker-process peers), llamacpp.py (llama.cpp on the same GGUF)."""
from specjax.bench.plan import select
from specjax.bench.run import run_bench
from specjax.io.prompts import Prompt, read_prompts

__all__ = ["Prompt", "read_prompts", "run_bench", "select"]
