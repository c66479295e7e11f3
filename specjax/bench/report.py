"""Bench reports: results.md, speedup.png, and the machine a run was measured on."""
from __future__ import annotations

import os
import pathlib
import platform

import numpy as np

from specjax.bench.aggregate import BASELINE, NEAR_TIE_GAP


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), which machines of the same kind differ by."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info(with_torch: bool = False) -> dict:
  import jax
  info = {"platform": platform.platform(), "machine": platform.machine(), "processor": cpu_model(),
          "python": platform.python_version(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
  if with_torch:
    try:
      import torch
      import transformers
      info.update(torch=torch.__version__, transformers=transformers.__version__,
                  torch_threads=torch.get_num_threads())
    except ImportError:
      pass
  return info


def loadavg():
  """1-minute load average (other processes on the machine skew timings), or None where unknown."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def _fmt(x, spec=".2f", none="–"):
  return none if x is None else format(x, spec)


def write_markdown(path: pathlib.Path, results: dict):
  agg, groups, methods = results["results"], results["groups"], results["methods"]
  cfg, mach = results["config"], results["machine"]
  lines = ["# specjax bench", "",
           f"Model `{cfg['model']}` ({cfg['dtype']}), {cfg['prompts_selected']} prompts from "
           f"`{cfg['prompts_file']}`, max_new_tokens {cfg['max_new_tokens']}, temperature {cfg['temperature']}, "
           f"batch size {cfg['batch_size']}"
           f"{'' if cfg.get('repeats', 1) == 1 else ', the fastest of ' + str(cfg['repeats']) + ' runs of each call'}. Machine: {mach.get('processor') or '?'}, {mach['platform']}, {mach['cpu_count']} CPUs, "
           f"JAX {mach['jax']} ({mach['backend']}), load average {mach.get('loadavg_start')} at the start, "
           f"{mach.get('loadavg_end')} at the end (other processes skew timings).", ""]
  errors = results.get("errors") or {}
  if errors:       # a failed peer: its rows below hold only what it recorded before the failure
    lines += ["## Errors", ""] + [f"- **{m}**: {msg}" for m, msg in errors.items()] + [""]
  lines += ["## Speedup over the autoregressive baseline (tau)", "",
            "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
  for m in methods:
    cells = []
    for g in groups:
      a = agg[m][g]
      cells.append(f"{_fmt(a['speedup'])}x ({_fmt(a['tau'])})" if a["speedup"] is not None else "–")
    lines.append(f"| {m}{' (error)' if m in errors else ''} | " + " | ".join(cells) + " |")
  lines += ["", "## Outputs identical to the baseline (greedy, token for token)", "",
            "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
  for m in methods:
    cells = []
    for g in groups:
      i = agg[m][g]["identical_to_baseline"]
      tie = f" (+{i['near_tie']} near-tie)" if i and i.get("near_tie") else ""
      gap = f"; gaps <= {i['max_gap']:.2g}" if i and i.get("max_gap") is not None else ""
      cells.append(f"{i['identical']}/{i['total']}{tie}{gap}" if i else "n/a (sampling)")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", "Gaps: the largest top-1 minus top-2 logit gap of the baseline at a first differing token.",
            f"A near-tie is a divergence whose top-2 logit gap at the first differing token is at most "
            f"{results.get('near_tie_gap', NEAR_TIE_GAP)} (float rounding); any other divergence is a real mismatch.",
            "", "## Tokens per second", "",
            "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
  for m in methods:
    lines.append(f"| {m} | " + " | ".join(_fmt(agg[m][g]["tokens_per_s"], ".1f") for g in groups) + " |")
  lines += ["", "speedup = (sum new tokens / sum wall s) of the method over the baseline's on the same prompts; "
            "tau = new tokens per target forward; compilation excluded.", ""]
  path.write_text("\n".join(lines), encoding="utf-8")


def plot_speedup(path: pathlib.Path, results: dict):
  """Grouped bars: one group per category, one bar per method (the baseline is the line at 1)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  agg, groups = results["results"], results["groups"]
  methods = [m for m in results["methods"] if m != BASELINE] or [BASELINE]
  fig = Figure(figsize=(max(6.0, 1.3 * len(groups) * max(1, len(methods)) / 2 + 2), 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / len(methods)
  x = np.arange(len(groups))
  for i, m in enumerate(methods):
    vals = [agg[m][g]["speedup"] or 0.0 for g in groups]
    bars = ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=m)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=7, padding=1)
  ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
  ax.set_xticks(x, groups, rotation=20)
  ax.set_ylabel("speedup over autoregressive (x)")
  cfg = results["config"]
  ax.set_title(f"specjax: {pathlib.Path(str(cfg['model'])).name}, {cfg['dtype']}, "
               f"{cfg['max_new_tokens']} new tokens, T={cfg['temperature']}", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(str(path), dpi=120)


def write_atomic(path: pathlib.Path, text: str):
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)
