"""Sharded training over the `fsdp` mesh axis, on 8 simulated CPU devices: fsdp=8, fsdp=4 x data=2
and data=8 train a small GPT-2 as one device does; each device holds its share of the parameter and
optimizer bytes; a fsdp=8 checkpoint resumes under fsdp=4 and on one device."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from tests.conftest import flat_weights
from tests.test_main import ROOT

# Runs named on the command line, in order: train=NAME:FSDP, resume=SOURCE:NAME:FSDP (a copy of
# SOURCE as it stood after its first epoch, resumed), share=FSDP (prints the first device's bytes).
SCRIPT = textwrap.dedent(
    """
    import pathlib, shutil, sys
    import jax, optax
    from flax import nnx
    from jax.sharding import PartitionSpec
    from megathread_jax import config_base, optim, parallel, tasks, train

    root = pathlib.Path(sys.argv[1])
    # SGD: Adam divides near-zero gradients by their own size and so turns the float noise of a
    # different reduction order into learning-rate-sized steps.
    OVERRIDES = {
        "model.n_layer": 2, "num_epochs": 2, "data.max_train_tokens": 8300, "batch_size": 16,
        "eval_batch_size": 16, "log_every_steps": 1, "checkpoint_every_steps": 0, "sample_tokens": 0,
        "optim.name": "sgd", "optim.momentum": 0.9, "optim.learning_rate": 0.05, "compilation_cache_dir": "",
    }

    def config(fsdp):
        return config_base.load_config("configs/gpt2.py:demo", {**OVERRIDES, "parallel.fsdp": fsdp})

    def first_device_bytes(fsdp):
        cfg = config(fsdp)
        _, params, rest = nnx.split(train.build_model(cfg, tasks.create(cfg).model_kwargs), nnx.Param, ...)
        tx = optim.make_optimizer(cfg.optim, optax.constant_schedule(cfg.optim.learning_rate))
        state, _ = train.initial_state(params, rest, tx, parallel.make_mesh(fsdp=fsdp))
        arrays = jax.tree.leaves((state.params, state.opt_state))
        held = sum(s.data.nbytes for x in arrays for s in x.addressable_shards if s.device == jax.devices()[0])
        sharded = [parallel.fsdp_spec(x.shape, fsdp) != PartitionSpec() for x in arrays]
        by_rule = sum(x.nbytes // fsdp if cut else x.nbytes for x, cut in zip(arrays, sharded))
        return held, by_rule, sum(x.nbytes for x in arrays)

    for run in sys.argv[2:]:
        kind, _, value = run.partition("=")
        if kind == "train":
            name, fsdp = value.split(":")
            train.train_and_evaluate(config(int(fsdp)), root / name)
        elif kind == "resume":
            source, name, fsdp = value.split(":")
            shutil.copytree(root / source, root / name)
            last = max(int(p.name) for p in (root / name / "checkpoints").glob("[0-9]*"))
            for later in ("checkpoints/" + str(last), "best/" + str(last), "weights"):
                shutil.rmtree(root / name / later, ignore_errors=True)
            train.train_and_evaluate(config(int(fsdp)), root / name)
        else:
            print("SHARE", value, *first_device_bytes(int(value)))
    """
)


def _run(tmp_path, devices: int, *runs: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), *runs],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _train_losses(workdir) -> list[float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


def test_sharded_runs_train_as_one_device_does(tmp_path):
    out = _run(
        tmp_path,
        8,
        "train=fsdp8:8",
        "train=fsdp4_data2:4",
        "train=data8:1",
        "resume=fsdp8:fsdp8_then_fsdp4:4",
        "share=8",
        "share=4",
    )
    out_one = _run(tmp_path, 1, "train=one:1", "resume=fsdp8:fsdp8_then_one:1")
    assert "resumed from step 4" in out and "resumed from step 4" in out_one

    shares = {
        int(f): tuple(map(int, rest))
        for _, f, *rest in (line.split() for line in out.splitlines() if line.startswith("SHARE"))
    }
    assert shares.keys() == {8, 4}
    for fsdp, (held, by_rule, total) in shares.items():
        print(f"fsdp={fsdp}: {held:,} of {total:,} parameter and optimizer bytes on the first device")
        assert held == by_rule, (fsdp, held, by_rule)
        assert held < total / fsdp * 1.05, (fsdp, held, total)  # all but the smallest arrays sharded
        # The training loop reports the same bytes for its own state.
        assert (
            f"{held / 2**20:.2f} MiB of parameters and optimizer state on each (mesh data={8 // fsdp} x fsdp={fsdp})"
            in out
        )

    reference_losses = _train_losses(tmp_path / "one")
    reference = flat_weights(tmp_path / "one" / "weights")
    assert len(reference_losses) == 8
    for name in ("fsdp8", "fsdp4_data2", "data8", "fsdp8_then_fsdp4", "fsdp8_then_one"):
        np.testing.assert_allclose(_train_losses(tmp_path / name)[-4:], reference_losses[-4:], rtol=1e-5, err_msg=name)
        weights = flat_weights(tmp_path / name / "weights")
        assert weights.keys() == reference.keys()
        for key, value in weights.items():
            np.testing.assert_allclose(value, reference[key], rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}")
        largest = max(float(np.abs(value - reference[key]).max()) for key, value in weights.items())
        print(f"{name}: largest parameter difference from one device {largest:.2e}")
