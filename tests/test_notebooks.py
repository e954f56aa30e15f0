"""The notebooks: valid nbformat v4 stored without outputs, run top to bottom in SMOKE mode, and
driving the package rather than defining models, training loops or converters of their own."""

import pathlib
import re
import subprocess
import sys
import textwrap

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


# Runs a notebook's setup cell as on Colab: `google.colab` imported, the clone at argv[2] (the
# cell's /content/megathread_jax), git and pip replaced by commands that fail and say why.
COLAB_SETUP = textwrap.dedent(
    """
    import importlib.metadata, pathlib, subprocess, sys, types

    for name in ("google.colab", "google.colab.output"):  # jax's debugger imports the second on Colab
        sys.modules[name] = types.ModuleType(name)
    sys.modules["google.colab"].output = sys.modules["google.colab.output"]
    cell, clone, installed = sys.argv[1], sys.argv[2], sys.argv[3] == "installed"
    if not installed:
        def not_installed(name):
            raise importlib.metadata.PackageNotFoundError(name)
        importlib.metadata.version = not_installed

    def offline(command, **kwargs):
        print("RAN", " ".join(command[:2] if command[0] == "git" else command[1:4]))
        return subprocess.CompletedProcess(command, 1, "its stdout", "ERROR: No matching distribution found for jax")

    subprocess.run = offline
    assert cell.count('"/content/megathread_jax"') == 1
    exec(compile(cell.replace('"/content/megathread_jax"', repr(clone)), "setup cell", "exec"))
    print("IMPORTED", pathlib.Path(sys.modules["megathread_jax"].__file__).resolve())
    """
)


def run_colab_setup(path: pathlib.Path, cwd: pathlib.Path, clone: pathlib.Path, installed: bool):
    cell = nbformat.read(path, as_version=4).cells[1].source
    command = [sys.executable, "-c", COLAB_SETUP, cell, str(clone), "installed" if installed else "missing"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_survives_a_runtime_restart_and_explains_a_failed_install(path, tmp_path):
    repository = NOTEBOOKS[0].parents[1]
    # After a restart: cloned and installed, and the working directory holds the clone's folder,
    # which `import megathread_jax` would take for an empty namespace package.
    (tmp_path / "megathread_jax").symlink_to(repository, target_is_directory=True)
    restarted = run_colab_setup(path, tmp_path, tmp_path / "megathread_jax", installed=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "RAN" not in restarted.stdout and "compute dtype for this accelerator" in restarted.stdout
    assert f"IMPORTED {repository / 'megathread_jax' / '__init__.py'}" in restarted.stdout

    # Cloned, not installed, and pip fails: retried once, its output shown, one line saying what to do.
    failed = run_colab_setup(path, tmp_path, tmp_path / "megathread_jax", installed=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stdout.count("RAN -m pip install") == 2 and "No matching distribution found for jax" in failed.stdout
    assert failed.stderr.strip() == (
        "pip install failed twice (its output is above): check the runtime's connection, then rerun this cell"
    )

    # Not cloned, and git fails the same way: nothing else is attempted.
    no_clone = run_colab_setup(path, tmp_path, tmp_path / "no_clone", installed=False)
    assert no_clone.returncode == 1 and "Traceback" not in no_clone.stderr
    assert no_clone.stdout.count("RAN git clone") == 2 and "pip" not in no_clone.stdout
    assert no_clone.stderr.startswith("git clone https://github.com/") and "rerun this cell" in no_clone.stderr


def test_readme_opens_each_notebook_in_colab_from_the_repository_the_notebooks_install():
    readme = (NOTEBOOKS[0].parents[1] / "README.md").read_text()
    for path in NOTEBOOKS:
        source = nbformat.read(path, as_version=4).cells[1].source
        repository = re.search(r'REPOSITORY = "https://github.com/([^"]+)"', source).group(1)
        assert f"colab.research.google.com/github/{repository}/blob/main/notebooks/{path.name}" in readme
