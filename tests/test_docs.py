"""The README's examples run as shown, and the API reference builds from the docstrings without a warning."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from specjax import cli_args

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
  return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _env():
  return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_readme_python_example_runs_verbatim():
  """The first Python block, run as a script: it asserts losslessness itself and prints the tau line."""
  code = _blocks("python")[0]
  assert 'specjax.load("default")' in code and "assert" in code
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=_env(), cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  taus = re.search(r"tokens per target forward: \[(.*)\]", r.stdout)
  assert taus, r.stdout
  # The second prompt asks the model to repeat a sentence of the prompt: prompt lookup must accept there.
  assert float(taus.group(1).split(",")[1]) > 1.0, r.stdout


def _commands() -> list[list[str]]:
  out = []
  for block in _blocks("bash"):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("#", 1)[0].strip()
      if line.startswith("specjax "):
        out.append(shlex.split(line.replace("$I", "0"))[1:])
  return out


def test_readme_commands_parse():
  """Every `specjax ...` line in the README names a real command and real flags (parsed, not run)."""
  commands = _commands()
  assert len(commands) >= 10 and {c[0] for c in commands} >= {"generate", "batch", "bench", "train", "info"}
  parser = cli_args.build_parser()
  for argv in commands:
    try:
      parser.parse_args(argv)
    except SystemExit as e:
      pytest.fail(f"README command does not parse: specjax {shlex.join(argv)} (exit {e.code})")


def test_readme_links_exist():
  for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
    if "://" not in target:
      assert (ROOT / target).exists(), target


# The public API (specjax: load, generate, Generation, Target, drafters, ...) and the modules the README and the
# notebooks call into; `make docs` builds the same list.
API_MODULES = ("specjax", "specjax.batch", "specjax.program", "specjax.train")


def test_api_reference_builds_without_warnings(tmp_path):
  pytest.importorskip("pdoc")
  r = subprocess.run([sys.executable, "-W", "error", "-m", "pdoc", *API_MODULES, "-o", str(tmp_path)],
                     capture_output=True, text=True, timeout=600, env=_env(), cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Warn" not in r.stderr, r.stderr[-3000:]
  for page in ("specjax.html", "specjax/batch.html", "specjax/program.html", "specjax/train.html",
               "specjax/drafters/eagle.html"):
    assert (tmp_path / page).is_file(), page


def test_public_names_resolve_whatever_was_imported_first():
  """Every name in specjax.__all__ resolves, and specjax.bench stays one thing (the subpackage) whether it is
  read before or after one of its modules is imported (it was run_bench until then)."""
  code = ("import specjax\n"
          "before = specjax.bench\n"
          "from specjax.bench.run import run_bench\n"
          "assert before is specjax.bench and specjax.bench.run_bench is run_bench, before\n"
          "assert all(getattr(specjax, n) is not None for n in specjax.__all__)\n")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
