"""`bench --profile`: both sides traced and summarised per step."""

import re

import pytest

from benchmarks import bench, profiling


def _events(pid, tid, names, dur, **args):
    return [{"ph": "X", "pid": pid, "tid": tid, "name": name, "dur": dur, "args": dict(args)} for name in names]


def _names(pid, process, threads):
    meta = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": process}}]
    return meta + [
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}
        for tid, name in threads.items()
    ]


def test_gpu_trace_counts_the_kernels_on_the_streams_only():
    events = (
        _names(1, "/host:CPU", {1: "python"})
        + _events(1, 1, ["PjitFunction(train_step)"] * 2, 900.0)
        + _names(7, "/device:GPU:0", {1: "Stream #13(Compute)", 2: "XLA Ops"})
        # two steps: per step two fusions of one kind, one gemm
        + _events(7, 1, ["loop_add_fusion.1", "loop_add_fusion.2", "gemm_fusion"] * 2, 10.0)
        + _events(7, 2, ["add.1", "dot.3"] * 2, 500.0)
    )
    summary = profiling.summarise_jax_trace(events, steps=2)
    assert summary.unit == "GPU kernels"
    assert summary.count_per_step == 3
    assert summary.busy_ms_per_step == pytest.approx(0.03)
    assert summary.top == [("loop_add_fusion", 2.0, pytest.approx(0.02)), ("gemm_fusion", 1.0, pytest.approx(0.01))]


def test_cpu_trace_counts_the_thunks_that_name_an_hlo_op():
    events = (
        _names(1, "/host:CPU", {1: "python", 2: "worker"})
        + _events(1, 1, ["PjitFunction(train_step)", "$profiler.py:151 start_trace"], 5000.0)
        + _events(1, 2, ["ThunkExecutor::Execute"], 4000.0)
        + _events(1, 2, ["ynn_fusion.3", "ynn_fusion.12", "copy.5"], 1000.0, hlo_op="x", hlo_module="jit_step")
    )
    summary = profiling.summarise_jax_trace(events, steps=1)
    assert (summary.unit, summary.count_per_step, summary.busy_ms_per_step) == ("XLA:CPU thunks", 3, 3.0)
    assert [name for name, _, _ in summary.top] == ["ynn_fusion", "copy"]


def test_bench_profile_traces_ours_and_the_reference(tmp_path, capsys):
    bench.main(["--model", "gpt2", "--gen-batch-sizes", "", "--quick", "--profile", str(tmp_path)])
    printed = capsys.readouterr().err
    for side, unit in [("ours", "XLA:CPU thunks"), ("HF_eager", "PyTorch CPU operators")]:
        summary = (tmp_path / side / "summary.txt").read_text()
        assert summary in printed
        count, ms = re.match(rf"{side}: (\d+) {unit} per step, ([\d.]+) ms summed", summary).groups()
        assert int(count) > 0 and float(ms) > 0
        assert len(summary.splitlines()) == 2 + profiling.TOP_OPERATIONS
    assert list((tmp_path / "ours").rglob("*.trace.json.gz")) and (tmp_path / "HF_eager" / "trace.json").exists()


@pytest.mark.parametrize("extra", [["--suite", "cpu"], ["--rounds", "2"], ["--input-path"]])
def test_profile_is_refused_where_it_would_trace_more_than_one_row(tmp_path, capsys, extra):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--profile", str(tmp_path), *extra])
    assert "--profile traces one row's train steps" in capsys.readouterr().err
