"""The tutorial notebook: it runs top to bottom in fast mode, and the committed .ipynb holds
exactly the cells of its source of truth, the jupytext percent script next to it, with no
outputs (`make notebook` regenerates it).

The notebook is executed by a real Jupyter kernel ("python3": ipykernel registers that
kernelspec in this virtual environment, and jupyter_client starts it with this interpreter).
Fast mode trains tiny models on the synthetic data set in a temporary folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "movielens_full_pipeline.ipynb"
SOURCE = NOTEBOOKS / "movielens_full_pipeline.py"  # the jupytext percent script


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
    # The funnel built step by step and train_funnel's, evaluated by the CLI, agree.
    assert "identical: the step-by-step funnel is train_funnel's" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 3  # the data, funnel.png, lambda_sweep.png
    assert _tree(NOTEBOOKS) == before  # nothing written into the repository


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def test_committed_notebook_matches_its_percent_script():
    script = jupytext.read(SOURCE)
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert _cells(committed) == _cells(script), (
        "notebooks/movielens_full_pipeline.ipynb differs from its source, "
        "notebooks/movielens_full_pipeline.py: run `make notebook` and commit both"
    )
    assert committed.metadata["kernelspec"] == script.metadata["kernelspec"]


def test_percent_script_is_the_only_source():
    # No generator of strings beside the notebook: the script is read by jupytext as is.
    assert sorted(p.name for p in NOTEBOOKS.iterdir() if p.suffix in (".py", ".ipynb")) == [
        "movielens_full_pipeline.ipynb",
        "movielens_full_pipeline.py",
    ]
    assert SOURCE.read_text().splitlines()[2:5] == [
        "#   jupytext:",
        "#     cell_metadata_filter: -all",
        "#     formats: ipynb,py:percent",
    ]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.id
