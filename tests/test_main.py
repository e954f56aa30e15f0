"""The training CLI end to end on built-in data: a run, its outputs, and a resume."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import timm
import torch

from megathread_jax.convert.__main__ import main as convert_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_DEMO = [
    "--config.num_epochs=1",
    "--config.data.train_size=128",
    "--config.data.val_size=64",
    "--config.batch_size=32",
    "--config.eval_batch_size=32",
    "--config.log_every_steps=2",
]


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_main(*args: str) -> subprocess.CompletedProcess:
    return run_module("megathread_jax.main", *args)


def test_demo_from_converted_weights_runs_and_resumes(tmp_path):
    weights = tmp_path / "timm.pth"
    torch.save(timm.create_model("mobilevit_xxs", num_classes=1000).state_dict(), weights)
    flax_dir = tmp_path / "flax"
    assert (
        convert_main(
            ["--model", "mobilevit_xxs", "--source", "timm", "--weights", str(weights), "--out", str(flax_dir)]
        )
        == 0
    )
    command = [
        "--config=configs/mobilevit.py:demo",
        f"--workdir={tmp_path / 'run'}",
        f"--config.init_from={flax_dir}",
        f"--config.compilation_cache_dir={tmp_path / 'xla'}",
        *TINY_DEMO,
    ]

    first = run_main(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "initialised" in first.stdout and "fresh 10-class head.fc" in first.stdout
    run = tmp_path / "run"
    assert (run / "checkpoints" / "4").is_dir() and (run / "best" / "4").is_dir()
    assert (run / "curves.png").stat().st_size > 0
    assert list((run / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 1 and 0.0 <= val[0]["top1"] <= 1.0 and val[0]["top5"] >= val[0]["top1"]
    assert "built-in demo data" in first.stdout + first.stderr
    assert list((tmp_path / "xla").iterdir()), "the compiled steps were not cached"

    second = run_main(*command)  # the same command again resumes instead of starting over
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 4" in second.stdout
    after = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in after if r["split"] == "train"] == [r for r in records if r["split"] == "train"]


def test_default_config_without_data_explains_what_to_do(tmp_path):
    result = run_main(
        "--config=configs/mobilevit.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'none'}",
        "--config.data.download=False",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "tiny-imagenet-200.zip" in result.stderr and "configs/mobilevit.py:demo" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["--config.optim.learning_rte=0.1", "--config=configs/mobilevit.py:bogus"])
def test_bad_config_is_refused(tmp_path, override):
    args = ["--config=configs/mobilevit.py:demo", f"--workdir={tmp_path / 'run'}", override]
    result = run_main(*args)
    assert result.returncode != 0
    assert ("learning_rte" in result.stderr) or ("unknown variant 'bogus'" in result.stderr)
    assert not (tmp_path / "run").exists()


def test_mobilenetv2_demo_with_a_frozen_backbone_prints_the_split(tmp_path):
    result = run_main(
        "--config=configs/mobilenetv2.py:demo",
        f"--workdir={tmp_path / 'run'}",
        "--config.freeze=features.[0-13]",
        "--config.data.resolution=32",
        *TINY_DEMO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable and" in result.stdout and "frozen parameters" in result.stdout
    assert (tmp_path / "run" / "checkpoints" / "4").is_dir()
    # Piped into a log: no progress bar, whose redraws would all pile onto one line there.
    assert "\r" not in result.stdout + result.stderr and "step/s" not in result.stderr


def test_gpt2_demo_learns_then_generates_and_evaluates_from_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = run_main(
        "--config=configs/gpt2.py:demo",
        f"--workdir={run}",
        "--config.model.n_layer=2",
        "--config.num_epochs=2",
        "--config.data.max_train_tokens=40000",
        "--config.log_every_steps=3",
        "--config.sample_tokens=20",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(train_losses) == 6 and train_losses[-1] < train_losses[0] - 1.0, train_losses
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 2 and val[1]["perplexity"] < val[0]["perplexity"]
    assert abs(val[1]["perplexity"] - math.exp(val[1]["loss"])) < 1e-3 * val[1]["perplexity"]
    assert "sample:\nThe for statement" in result.stdout
    assert "built-in demo data" in result.stdout + result.stderr

    sample = run_module(
        "megathread_jax.generate",
        "--checkpoint",
        str(run),
        "--prompt",
        "def ",
        "--max-new-tokens",
        "12",
        "--do-sample",
        "--top-k",
        "5",
        "--attention-png",
        str(tmp_path / "attention.png"),
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert sample.stdout.startswith("def ") and len(sample.stdout) > len("def \n")
    assert (tmp_path / "attention.png").stat().st_size > 0

    corpus = tmp_path / "eval.txt"
    corpus.write_text("The for statement is used to iterate over the elements of a sequence.\n" * 20)
    evaluation = run_main(
        "--config=configs/gpt2.py:eval_ppl",
        f"--workdir={tmp_path / 'eval'}",
        f"--config.init_from={run / 'weights'}",
        "--config.data.name=text_file",
        f"--config.data.path={corpus}",
        "--config.data.tokenizer=bytes",
        "--config.data.seq_len=128",
        "--config.data.eval_stride=64",
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "initialised" in evaluation.stdout and "final validation" in evaluation.stdout
    [val] = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert val["split"] == "val" and 1.0 < val["perplexity"] < 257


def test_gpt2_finetune_offline_explains_what_to_do(tmp_path):
    result = run_main(
        "--config=configs/gpt2.py",
        f"--workdir={tmp_path / 'run'}",
        "--config.data.name=text_file",
        f"--config.data.path={tmp_path / 'missing.txt'}",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "data.path" in result.stderr
    assert not (tmp_path / "run").exists()
