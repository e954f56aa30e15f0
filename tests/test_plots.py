"""The package's figures (learning curves, attention maps) are saved without touching matplotlib's
backend or pyplot's figures, so a notebook's inline plots keep showing."""

import subprocess
import sys
import textwrap

from tests.test_main import ROOT

SCRIPT = textwrap.dedent(
    """
    import pathlib, sys
    import matplotlib
    matplotlib.use("svg")  # stands for a notebook's inline backend
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image
    from megathread_jax import attention_maps
    from megathread_jax.metrics import MetricWriter

    root = pathlib.Path(sys.argv[1])
    plt.figure()  # the user's own figure, open while the package plots
    writer = MetricWriter(root / "run")
    for step in (1, 2):
        writer.write(step, "train", {"loss": 3.0 - step, "accuracy": 0.2 * step})
    writer.write(2, "val", {"loss": 1.5, "accuracy": 0.5})
    curves = writer.plot_curves()
    writer.close()
    weights = np.tril(np.ones((2, 3, 3))) / np.arange(1, 4)[None, :, None]
    heatmaps = attention_maps.plot_attention(weights, ["a", "b", "c"], root / "attention.png", title="t")
    for png in (curves, heatmaps):
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 100, image.size
    print("STATE", matplotlib.get_backend(), plt.get_fignums())
    """
)


def test_figures_leave_the_backend_and_pyplot_alone(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "STATE svg [1]"
