"""The notebooks run top to bottom in their small setting (SPECJAX_NOTEBOOK_SMALL=1: fewer prompts, tokens and
steps; their cells assert what they show), and none is committed with outputs."""
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).parent.parent
NAMES = ["01_quickstart.ipynb", "02_train_a_drafter.ipynb", "03_benchmark.ipynb", "04_sharding_and_batch_jobs.ipynb"]


def test_notebooks_are_committed_without_outputs():
  assert sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) == NAMES
  for name in NAMES:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    assert "google.colab" in nb.cells[1].source, f"{name}: the first code cell must install specjax on Colab"
    for c in nb.cells:
      if c.cell_type == "code":
        assert not c.outputs and c.execution_count is None, f"{name}: committed with outputs (clear them)"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path):
  nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
  # The kernel imports this checkout's specjax and writes its files (and training caches) under tmp_path.
  env = dict(os.environ, SPECJAX_NOTEBOOK_SMALL="1", SPECJAX_CACHE=str(tmp_path / "cache"),
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  try:
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
  finally:      # the executed copy, with each cell's timing, for whoever reads a failure or a slow run
    nbformat.write(nb, tmp_path / name)
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert str(ROOT / "specjax") in text, "the notebook must print which specjax it imported"
