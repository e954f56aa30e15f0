"""The notebooks: valid nbformat v4 stored without outputs, run top to bottom in SMOKE mode, and
driving the package rather than defining models, training loops or converters of their own."""

import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
OWN_DEFINITIONS = re.compile(
    r"class \w+\(.*(nnx\.Module|nn\.Module)|def (train_step|train_loop|from_torch|to_torch)\b"
    r"|jax\.value_and_grad|nnx\.value_and_grad|optax\.\w+\("
)


def test_the_three_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_valid_with_outputs_cleared_and_no_own_model_code(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
            assert not OWN_DEFINITIONS.search(cell.source), cell.source[:200]
    first = nb.cells[1].source
    assert "google.colab" in first and "pip" in first and "jax.devices()" in first and "SMOKE" in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_in_smoke_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "SMOKE mode" in text
    assert not any(o.output_type == "error" for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    # Every figure a cell shows reaches the page (inline, as a PNG output).
    for cell in nb.cells:
        if cell.cell_type == "code":
            shown = cell.source.count("plt.show()") + cell.source.count("display(Image(")
            images = sum("image/png" in o.get("data", {}) for o in cell.outputs)
            assert images >= shown, f"{images} of {shown} figures shown by: {cell.source[:200]}"


def test_readme_opens_each_notebook_in_colab_from_the_repository_the_notebooks_install():
    readme = (NOTEBOOKS[0].parents[1] / "README.md").read_text()
    for path in NOTEBOOKS:
        source = nbformat.read(path, as_version=4).cells[1].source
        repository = re.search(r'REPOSITORY = "https://github.com/([^"]+)"', source).group(1)
        assert f"colab.research.google.com/github/{repository}/blob/main/notebooks/{path.name}" in readme
