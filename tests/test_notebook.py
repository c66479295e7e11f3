"""The quickstart notebook runs top to bottom (its cells assert losslessness themselves)."""
import pathlib

import nbformat
from nbclient import NotebookClient


def test_quickstart_notebook_executes():
  path = pathlib.Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent.parent)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "tau" in outputs
