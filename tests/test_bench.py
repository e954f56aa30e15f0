"""The benchmark command's form (never its speed)."""

import json

import pytest

from megathread_jax import bench


@pytest.mark.parametrize("model, reference, rows", [
    ("mobilevit_xxs", "timm eager", 1), ("mobilenet_v2", "torchvision eager", 1), ("gpt2", "HF", 3),
])
def test_quick_benchmark_prints_and_writes_the_table(tmp_path, capsys, model, reference, rows):
    out = tmp_path / "bench.json"
    bench.main(["--model", model, "--quick", "--json", str(out)])
    table = capsys.readouterr().out
    assert all(column in table for column in bench.COLUMNS) and reference in table and model in table
    written = json.loads(out.read_text())
    assert len(written) == rows
    for row in written:
        assert set(row) == set(bench.COLUMNS)
        assert row["ours"] > 0 and row["reference_value"] > 0
        assert row["ratio"] == pytest.approx(row["ours"] / row["reference_value"], abs=0.006)
        assert row["device"].startswith("CPU")
    if model != "gpt2":
        assert "conv=matmul" in written[0]["setting"] and written[0]["unit"] == "images/s"
    else:
        assert [r["unit"] for r in written] == ["tokens/s", "new tokens/s", "new tokens/s"]
