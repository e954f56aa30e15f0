"""Interrupted runs resume exactly; non-finite values stop the run (or are skipped) without losing the
last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import flat_weights
from tests.test_main import ROOT, TINY_DEMO, run_main

RUN = [
    "--config=configs/mobilevit.py:demo",
    *TINY_DEMO,
    "--config.num_epochs=3",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=2",
]  # 12 steps, a checkpoint every 2


def _start(workdir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "megathread_jax.main", *RUN, f"--workdir={workdir}"],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(process: subprocess.Popen, workdir, step: int) -> None:
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step}")


def _final_val(workdir) -> dict:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][-1]


def _stop_with(process, workdir, signum: signal.Signals) -> tuple[int, str]:
    """Sends `signum`, then checks the exit code shells expect and the checkpoint the run saved."""
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum and "Traceback" not in stderr
    stopped_at = int(stderr.split(f"stopped by {signum.name} after step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()
    return stopped_at, stderr


def test_sigterm_sigkill_and_a_half_written_checkpoint_then_the_same_result(tmp_path):
    uninterrupted = run_main(*RUN, f"--workdir={tmp_path / 'a'}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    run = tmp_path / "b"
    first = _start(run)
    _wait_for_step(first, run, 3)
    stopped_at, _ = _stop_with(first, run, signal.SIGTERM)

    second = _start(run)
    _wait_for_step(second, run, stopped_at + 3)
    second.kill()  # SIGKILL: no handler runs
    second.wait(timeout=60)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    # a save cut short by the kill: orbax writes into a temporary directory and renames when complete
    partial = run / "checkpoints" / "10.orbax-checkpoint-tmp-1234567890"
    partial.mkdir()
    (partial / "_CHECKPOINT_METADATA").write_text("{truncated")

    third = run_main(*RUN, f"--workdir={run}")
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"resumed from step {steps[-1]}" in third.stdout

    ours, reference = flat_weights(run / "weights"), flat_weights(tmp_path / "a" / "weights")
    assert ours.keys() == reference.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], reference[key], err_msg=key)  # bit-identical
    assert _final_val(run) == _final_val(tmp_path / "a")


def test_ctrl_c_saves_then_exits_130(tmp_path):
    process = _start(tmp_path)
    _wait_for_step(process, tmp_path, 2)
    _, stderr = _stop_with(process, tmp_path, signal.SIGINT)
    assert "Rerun the same command" in stderr


NAN_RUN = [
    "--config=configs/mobilevit.py:demo",
    *TINY_DEMO,
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=2",
    "--config.optim.learning_rate=1e30",
    "--config.optim.grad_clip_norm=0",
]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    result = run_main(*NAN_RUN, f"--workdir={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "non-finite" in result.stderr and "at step 3" in result.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    assert not (tmp_path / "weights").exists()


def test_non_finite_updates_can_be_skipped(tmp_path):
    result = run_main(*NAN_RUN, "--config.skip_nonfinite_updates=True", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    train = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    assert sum(r["skipped_updates"] for r in train) >= 1
    assert all(np.isfinite(v).all() for v in flat_weights(tmp_path / "weights").values())
