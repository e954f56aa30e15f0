"""The benchmark command's form (never its speed)."""

import json

from megathread_jax import bench


def test_quick_benchmark_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--json", str(out)])
    table = capsys.readouterr().out
    assert "ours_img_per_s" in table and "timm eager" in table and "mobilevit_xxs" in table
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    row = rows[0]
    assert row["ours_img_per_s"] > 0 and row["reference_img_per_s"] > 0
    assert abs(row["ratio"] - row["ours_img_per_s"] / row["reference_img_per_s"]) < 0.02
    assert row["device"].startswith("CPU") and "dw=shifted" in row["setting"]
