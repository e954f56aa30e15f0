"""The benchmark command's form (never its speed)."""

import json

import pytest

from megathread_jax import bench


@pytest.mark.parametrize("model, reference", [("mobilevit_xxs", "timm eager"), ("mobilenet_v2", "torchvision eager")])
def test_quick_benchmark_prints_and_writes_the_table(tmp_path, capsys, model, reference):
    out = tmp_path / "bench.json"
    bench.main(["--model", model, "--quick", "--json", str(out)])
    table = capsys.readouterr().out
    assert "ours_img_per_s" in table and reference in table and model in table
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    row = rows[0]
    assert row["ours_img_per_s"] > 0 and row["reference_img_per_s"] > 0
    assert abs(row["ratio"] - row["ours_img_per_s"] / row["reference_img_per_s"]) < 0.02
    assert row["device"].startswith("CPU") and "dw=shifted" in row["setting"]
