"""Two processes joined by jax.distributed over loopback train the demo, data-parallel and with the
state sharded across them (fsdp=2), and end where one process ends; checkpoints and metrics are
written once."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import flat_weights
from tests.test_main import ROOT, TINY_DEMO

# SGD: Adam divides near-zero gradients by their own size and so turns the float noise of a different
# reduction order into learning-rate-sized steps.
COMMAND = [
    sys.executable,
    "-m",
    "megathread_jax.main",
    "--config=configs/mobilevit.py:demo",
    *TINY_DEMO,
    "--config.optim.name=sgd",
    "--config.optim.momentum=0.9",
    "--config.optim.learning_rate=0.05",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(workdir, *args: str) -> list[str]:
    address = f"localhost:{_free_port()}"
    processes = [
        subprocess.Popen(
            [*COMMAND, f"--workdir={workdir}", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "JAX_PLATFORMS": "cpu",
                "JAX_COORDINATOR_ADDRESS": address,
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            },
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "final weights" in outputs[0] and "final weights" not in outputs[1]  # process 0 reports
    return outputs


def test_two_processes_train_like_one(tmp_path):
    """Replicated (data=2) and sharded across the processes (fsdp=2), against one process."""
    assert "on 2 cpu device(s)" in _two_processes(tmp_path / "two")[0]
    assert "(mesh data=1 x fsdp=2)" in _two_processes(tmp_path / "two_fsdp", "--config.parallel.fsdp=2")[0]

    single = subprocess.run(
        [*COMMAND, f"--workdir={tmp_path / 'one'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]

    one_weights = flat_weights(tmp_path / "one" / "weights")
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for run in ("two", "two_fsdp"):
        two_weights = flat_weights(tmp_path / run / "weights")
        assert two_weights.keys() == one_weights.keys()
        for key, value in two_weights.items():
            np.testing.assert_allclose(value, one_weights[key], rtol=1e-4, atol=1e-5, err_msg=f"{run} {key}")
        two = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [(r["split"], r["step"]) for r in two] == [("train", 2), ("train", 4), ("val", 4)]  # once each
        assert [(r["split"], r["step"]) for r in one] == [(r["split"], r["step"]) for r in two]
        for a, b in zip(two, one, strict=True):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
        assert sorted(p.name for p in (tmp_path / run / "checkpoints").iterdir()) == ["4"]
