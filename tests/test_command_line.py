"""A careless user at the command line: each mistake gets one line that says what to do, the
right exit code (2 for usage, 1 for a failure), no traceback, and nothing written."""

import fcntl
import importlib.util
import json
import os
import pathlib
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from megathread_jax import checkpoints, models
from megathread_jax.data import cifar10
from tests.test_main import ROOT, TINY_DEMO, run_main, run_module

DEMO = "--config=configs/mobilevit.py:demo"


def refused(result, exit_code: int, *words: str, unwritten: pathlib.Path | None = None) -> str:
    """The one-line message of a command that must have stopped with `exit_code`."""
    assert result.returncode == exit_code, result.stdout[-1500:] + result.stderr[-1500:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    message = result.stderr.split("error: ", 1)[1].strip()
    assert "\n" not in message, result.stderr
    for word in words:
        assert word in message, message
    if unwritten is not None:
        assert not unwritten.exists()
    return message


def test_help_lists_every_config_file_and_variant():
    result = run_main("--help")
    assert result.returncode == 0 and result.stderr == ""
    for name, module_file in (("mobilevit", "mobilevit"), ("mobilenetv2", "mobilenetv2"), ("gpt2", "gpt2")):
        spec = importlib.util.spec_from_file_location(name, f"configs/{module_file}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for variant, description in module.VARIANTS.items():
            [line] = [line for line in result.stdout.splitlines() if f"configs/{module_file}.py:{variant} " in line]
            assert description in line
    assert "--print_config" in result.stdout and "FILE:list" in result.stdout


@pytest.mark.parametrize("variant", ["list", "help"])
def test_list_variant_describes_the_variants(variant):
    result = run_main(f"--config=configs/mobilenetv2.py:{variant}")
    assert result.returncode == 0 and result.stderr == ""
    assert "configs/mobilenetv2.py:gradual" in result.stdout and "(the default)" in result.stdout


def test_print_config_shows_values_and_meanings_and_writes_nothing(tmp_path):
    result = run_main(DEMO, f"--workdir={tmp_path / 'run'}", "--config.batch_size=16", "--print_config")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "config.batch_size=16  " in next(line for line in lines if line.startswith("config.batch_size="))
    assert any(line.startswith("config.optim.learning_rate=0.004 ") and "peak learning rate" in line for line in lines)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        ([DEMO, "--config.batch_sise=8"], ["config.batch_sise", "did you mean config.batch_size?"]),
        ([DEMO, "--config.optim.learning_rte=0.1"], ["did you mean config.optim.learning_rate?"]),
        (["--config=configs/mobilevit.py:demoo"], ["unknown variant 'demoo'", "scratch_64", "demo", ":list"]),
        (["--config=configs/mobilevt.py"], ["configs/mobilevt.py does not exist"]),
        ([], ["--config is required", "--help"]),
        ([DEMO, "--config.batch_size=abc"], ["--config.batch_size=abc", "invalid literal for int()"]),
        ([DEMO, "--workdri=x"], ["Unknown command line flag 'workdri'", "workdir"]),
        ([DEMO, "--config.num_epochs=-1"], ["config.num_epochs=-1", "an integer >= 0"]),
        ([DEMO, "--config.data.crop_scale=(0.5,2.0)"], ["config.data.crop_scale=(0.5, 2.0)", "0 < min <= max <= 1"]),
        ([DEMO, "--config.freeze=stages.[4-1]"], ["empty range [4-1]"]),
        ([DEMO, "--config.parallel.fsdp=0"], ["config.parallel.fsdp=0", "an integer >= 1"]),
        ([DEMO, "--config.parallel.fsdp=3"], ["config.parallel.fsdp=3 must divide the 1 devices"]),
        ([DEMO, "--config.lora.rank=-2"], ["config.lora.rank=-2", "an integer >= 0"]),
        ([DEMO, "--config.lora.rank=4"], ["LoRA adapts GPT-2's projections", "--config.lora.rank=0"]),
        (
            ["--config=configs/gpt2.py:demo", "--config.lora.rank=4", "--config.lora.targets=transformer.h.[7-9]"],
            ["config.lora.targets", "'transformer.h.[7-9]' matches no projection", "transformer.h.0.attn.c_attn"],
        ),
    ],
)
def test_usage_errors_exit_2_in_one_line_and_write_nothing(tmp_path, args, words):
    message = refused(run_main(*args, f"--workdir={tmp_path / 'run'}"), 2, unwritten=tmp_path / "run")
    assert all(word in message for word in words), message


def test_a_freezing_pattern_that_matches_nothing_is_refused_before_the_workdir_is_made(tmp_path):
    result = run_main(DEMO, f"--workdir={tmp_path / 'run'}", "--config.freeze=stage.[0-1]", *TINY_DEMO)
    message = refused(result, 2, unwritten=tmp_path / "run")
    assert "'stage.[0-1]'" in message and "matches no parameter" in message, message


def _tree(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_rerun_that_changes_the_trajectory_is_refused_and_one_that_changes_logging_resumes(tmp_path):
    run = tmp_path / "run"
    first = run_main(DEMO, f"--workdir={run}", *TINY_DEMO)
    assert first.returncode == 0, first.stderr[-2000:]
    saved = json.loads((run / checkpoints.CONFIG_FILE).read_text())
    assert saved["batch_size"] == 32 and saved["data.crop_scale"] == [0.6, 1.0]
    before = _tree(run)

    changed = run_main(DEMO, f"--workdir={run}", *TINY_DEMO, "--config.batch_size=16", "--config.seed=3")
    message = refused(changed, 2, "config.batch_size: 32 -> 16", "config.seed: 0 -> 3", "new --workdir")
    assert f"--config.init_from={run / 'weights'}" in message
    assert _tree(run) == before

    relogged = run_main(DEMO, f"--workdir={run}", *TINY_DEMO, "--config.log_every_steps=1")
    assert relogged.returncode == 0, relogged.stderr[-2000:]
    assert "resumed from step 4" in relogged.stdout
    assert json.loads((run / checkpoints.CONFIG_FILE).read_text())["log_every_steps"] == 1


def test_cifar10_without_the_preparing_packages_names_them(tmp_path):
    missing = [name for name in cifar10.PREPARE_NEEDS if importlib.util.find_spec(name) is None]
    if not missing:
        pytest.skip("TensorFlow and importlib_resources are installed here")
    result = run_main(
        "--config=configs/mobilenetv2.py:linear_probe",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'data'}",
    )
    message = refused(result, 1, "preparing CIFAR-10", "megathread_jax[cifar10]", *missing, unwritten=tmp_path / "run")
    assert "configs/mobilenetv2.py:demo" in message


@pytest.mark.parametrize("suffix, words", [(".pth", ["corrupt", "PyTorch file"]), (".safetensors", ["corrupt"])])
def test_convert_calls_a_damaged_weight_file_corrupt(tmp_path, suffix, words):
    weights = tmp_path / f"random_bytes{suffix}"
    weights.write_bytes(np.random.default_rng(0).bytes(4096))
    result = run_module(
        "megathread_jax.convert",
        *("--model", "mobilevit_xxs", "--source", "timm", "--weights", str(weights), "--out", str(tmp_path / "out")),
    )
    message = refused(result, 1, *words, unwritten=tmp_path / "out")
    assert "run code" not in message


def _gpt2_weights(directory: pathlib.Path) -> pathlib.Path:
    model = models.create("gpt2", n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=257)
    return checkpoints.save_weights(
        directory, model, checkpoints.weights_meta("gpt2", model, step=0, tokenizer="bytes")
    )


def test_generate_refuses_an_image_model_naming_it(tmp_path):
    model = models.create("mobilevit_xxs", num_classes=10)
    weights = checkpoints.save_weights(tmp_path / "image", model, checkpoints.weights_meta("mobilevit_xxs", model))
    result = run_module("megathread_jax.generate", "--checkpoint", str(weights), "--prompt", "hi")
    refused(result, 2, "holds 'mobilevit_xxs' weights", "GPT-2 checkpoint", "megathread_jax.predict")
    assert result.stdout == ""


def test_generate_refuses_too_many_new_tokens_before_echoing_the_prompt(tmp_path):
    weights = _gpt2_weights(tmp_path / "gpt2")
    result = run_module(
        "megathread_jax.generate", "--checkpoint", str(weights), "--prompt", "The cat", "--max-new-tokens", "100000"
    )
    refused(result, 2, "max_new_tokens (100000)", "64 positions")
    assert result.stdout == ""


def test_generate_beam_search_prints_the_best_beam_and_refuses_sampling_beams(tmp_path):
    weights = _gpt2_weights(tmp_path / "gpt2")
    common = ["megathread_jax.generate", "--checkpoint", str(weights), "--prompt", "The cat", "--max-new-tokens", "8"]
    result = run_module(*common, "--num-beams", "3", "--early-stopping", "never", "--no-repeat-ngram-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("The cat") and len(result.stdout) > len("The cat\n")
    refused(run_module(*common, "--num-beams", "3", "--do-sample"), 2, "beam search", "leave out do_sample")


def test_generate_offline_is_quiet_and_says_how_to_generate_from_a_file(tmp_path):
    # A hub address where nothing listens: the hub client fails as it does without a network.
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    result = run_module("megathread_jax.generate", "--model", "gpt2", "--prompt", "hi", env=env)
    message = refused(result, 1, "could not download the hf weights of gpt2", "--weights FILE", "--checkpoint DIR")
    assert "Retry" not in result.stderr and "WARNING" not in result.stderr and "init_from" not in message
    assert result.stdout == ""


def _run_in_terminal(args: list[str], timeout: float = 300) -> str:
    """What a terminal shows of a command (stdout and stderr on one pseudo-terminal), raw."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    process = subprocess.Popen(
        [sys.executable, "-m", "megathread_jax.main", *args],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the command exited and closed its side
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=60)
    os.close(leader)
    assert process.returncode == 0, output.decode()[-2000:]
    return output.decode()


def test_messages_during_the_progress_bar_get_lines_of_their_own(tmp_path):
    shown = _run_in_terminal(
        [
            "--config=configs/mobilenetv2.py:demo",
            f"--workdir={tmp_path / 'run'}",
            *TINY_DEMO,
            "--config.num_epochs=2",
            "--config.data.resolution=32",
            "--config.unfreeze=features.[0-9]@1",  # a message when epoch 1 starts, with the bar drawn
        ]
    )
    assert "step/s" in shown or "s/step" in shown  # the bar was drawn
    # The last redraw of each terminal line is what stays visible: a bar or a message, never both.
    visible = [line.rsplit("\r", 1)[-1] for line in shown.replace("\r\n", "\n").split("\n")]
    messages = [line for line in visible if "from epoch" in line or line.startswith("[train]")]
    assert any(line.startswith("from epoch 1: ") for line in messages), visible
    assert all(line.startswith(("from epoch", "[train]")) for line in messages), messages
    assert not [line for line in visible if line.count("train:") > 1]
