"""The tutorial notebook: it runs top to bottom in fast mode, and the committed file is exactly
what `notebooks/build_notebook.py` writes, with no outputs.

The notebook is executed by a real Jupyter kernel ("python3": ipykernel registers that
kernelspec in this virtual environment, and jupyter_client starts it with this interpreter).
Fast mode trains tiny models on the synthetic data set in a temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "movielens_full_pipeline.ipynb"
BUILDER = NOTEBOOKS / "build_notebook.py"


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_kernel_is_this_virtual_environment():
    # ipykernel installs the "python3" spec under sys.prefix; its argv[0] "python" is
    # replaced by sys.executable when jupyter_client launches it. A "python3" spec found
    # first elsewhere (e.g. ~/.local/share/jupyter) could run another interpreter.
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve()), (
        f"the python3 kernelspec at {spec.resource_dir} is not this environment's "
        f"({sys.prefix}); install ipykernel here (pip install -e '.[dev]')"
    )
    assert spec.argv[:3] == ["python", "-m", "ipykernel_launcher"]


def test_notebook_runs_in_fast_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFUNNEL_NOTEBOOK_MODE", "fast")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temp folders land here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.chdir(tmp_path)
    before = _tree(NOTEBOOKS)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "MODE = fast" in text
    assert "path 'popularity'" in text  # the unknown-id fallback was shown
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 4  # data, training curves, funnel.png, lambda_sweep.png
    assert _tree(NOTEBOOKS) == before  # nothing written into the repository


def test_builder_regenerates_the_committed_notebook(tmp_path):
    out = tmp_path / "rebuilt.ipynb"
    subprocess.run([sys.executable, str(BUILDER), "--out", str(out)], check=True)
    assert json.loads(out.read_text()) == json.loads(NOTEBOOK.read_text()), (
        "the committed notebook differs from build_notebook.py's output: "
        "run `python notebooks/build_notebook.py` and commit the result"
    )


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.id
