"""The benchmark command's form (never its speed), run from the checkout as `python -m benchmarks.bench`."""

import json

import pytest

from benchmarks import bench, table


@pytest.mark.parametrize(
    "model, reference, rows",
    [
        ("mobilevit_xxs", "timm eager", 1),
        ("mobilenet_v2", "torchvision eager", 1),
        ("gpt2", "HF", 3),
    ],
)
def test_quick_benchmark_prints_and_writes_the_table(tmp_path, capsys, model, reference, rows):
    out = tmp_path / "bench.json"
    bench.main(["--model", model, "--quick", "--json", str(out)])
    printed = capsys.readouterr()
    printed_table = printed.out
    assert all(column in printed_table for column in table.COLUMNS)
    assert reference in printed_table and model in printed_table
    assert "Flax step: compiled and ran step 1 in" in printed.err and "PyTorch step: " in printed.err
    assert "Both sides of each row ran in one process, under: " in printed_table
    written = json.loads(out.read_text())
    assert len(written) == rows
    for row in written:
        assert set(row) == set(table.COLUMNS)
        assert row["ours"] > 0 and row["reference_value"] > 0
        assert row["ratio"] == pytest.approx(row["ours"] / row["reference_value"], rel=0.001, abs=0.006)
        assert row["device"].startswith("CPU")
    if model != "gpt2":
        assert "conv=matmul" in written[0]["setting"] and written[0]["unit"] == "images/s"
    else:
        assert [r["unit"] for r in written] == ["tokens/s", "new tokens/s", "new tokens/s"]


def test_quick_input_path_and_end_to_end_rows(tmp_path):
    out = tmp_path / "bench.json"
    rows = bench.main(["--input-path", "--e2e-epochs", "1", "--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == rows
    input_path, end_to_end = rows
    assert input_path["reference"] == "synthetic on device" and input_path["unit"] == "images/s"
    assert input_path["ratio"] == pytest.approx(
        input_path["ours"] / input_path["reference_value"], rel=0.001, abs=0.006
    )
    assert end_to_end["unit"] == "s" and end_to_end["ours"] > 0 and end_to_end["ratio"] is None


def test_input_path_is_refused_for_other_models():
    with pytest.raises(ValueError, match="use --model mobilevit_xxs"):
        bench.main(["--model", "mobilenet_v2", "--input-path", "--quick"])


@pytest.mark.parametrize("suite", sorted(bench.SUITES))
def test_suite_rows_name_real_options(suite):
    """Every override in a suite is an option of the command with a value it accepts."""
    parser = bench.parser()
    defaults = vars(parser.parse_args([]))
    choices = {action.dest: action.choices for action in parser._actions if action.choices}
    for spec in bench.SUITES[suite]:
        assert set(spec) <= set(defaults), set(spec) - set(defaults)
        for key, value in spec.items():
            assert key not in choices or value in choices[key], (key, value)


def test_rounds_run_each_row_in_fresh_processes_and_report_medians(tmp_path):
    out = tmp_path / "bench.json"
    rows = bench.main(["--model", "gpt2", "--gen-batch-sizes", "", "--quick", "--rounds", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == rows
    (row,) = rows
    assert row["setting"].startswith("train L1 d64") and "median of 2 processes (ratios " in row["setting"]
    assert row["ours"] > 0 and row["reference_value"] > 0
    assert row["ratio"] == pytest.approx(row["ours"] / row["reference_value"], rel=0.001, abs=0.006)


def test_median_of_rounds_takes_each_side_s_median():
    def round_rows(ours, reference):
        return [table.row("m", "s", "images/s", ours, "ref", reference), table.row("m", "e2e", "s", ours, "-", None)]

    combined = table.median_of_rounds([round_rows(100, 150), round_rows(300, 100), round_rows(200, 200)])
    timed, end_to_end = combined
    assert (timed["ours"], timed["reference_value"], timed["ratio"]) == (200, 150, 1.33)
    assert timed["setting"] == "s, median of 3 processes (ratios 0.67-3.0)"
    assert (end_to_end["ours"], end_to_end["reference_value"], end_to_end["ratio"]) == (200, None, None)
    assert end_to_end["setting"] == "e2e, median of 3 processes"


def test_rounds_below_one_are_refused():
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])


def test_a_failing_suite_row_is_reported_and_the_rows_after_it_still_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        bench.SUITES,
        "cpu",
        [
            {"model": "mobilenet_v2", "input_path": True},  # refused: the input path is MobileViT-XXS's
            {"model": "gpt2", "gen_batch_sizes": [], "no_reference": True},
        ],
    )
    out = tmp_path / "bench.json"
    with pytest.raises(
        SystemExit,
        match=r"1 row\(s\) of the suite failed:\nmobilenet_v2 b4 32px input path: "
        "ValueError: --input-path",
    ):
        bench.main(["--suite", "cpu", "--quick", "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["model"] == "gpt2" and row["ours"] > 0
    assert "gpt2" in capsys.readouterr().out


def test_only_picks_suite_rows_by_label():
    rows = bench.main(
        ["--suite", "cpu", "--only", "mobilenet_v2 b64 96px", "--only", "gpt2", "--quick", "--gen-batch-sizes", ""]
    )
    assert [row["model"] for row in rows] == ["mobilenet_v2", "gpt2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--suite", "cpu", "--only", "resnet"],
            "--only resnet matches no row of the cpu suite: mobilevit_xxs b64 64px train step;",
        ),
        (["--only", "gpt2"], "--only picks rows of a --suite"),
    ],
)
def test_only_refuses_what_it_cannot_pick(capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


def test_the_allocator_environment_is_named(monkeypatch):
    for name in table.ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert table.allocator_environment() == "default allocator"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert table.allocator_environment() == "GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in table.describe_device()
