"""Faults and bad input: each gets a short error (no traceback), a non-zero exit where a command
runs, and leaves the workdir as it was. One test per case:

| case | test |
|---|---|
| each mistake at the command line (fields, variants, values, reruns, generate) | tests/test_command_line.py |
| missing data set | tests/test_main.py::test_default_config_without_data_explains_what_to_do |
| truncated zip | test_truncated_zip |
| bad JPEG in the zip | test_bad_jpeg |
| stale or damaged decoded cache | test_stale_cache_is_rebuilt, test_damaged_cache_without_source |
| workdir of another model or shape | test_workdir_of_another_model |
| converter given weights of another architecture | tests/convert/test_convert_cli.py (GPT-2 weights, image model) |
| interrupted download | test_interrupted_download_leaves_nothing_then_refetches_and_checks |
| wrong channels or dtype given to a model | test_wrong_channels_or_dtype |
| disk full while a checkpoint is saved | test_disk_full_while_saving_keeps_the_previous_checkpoint |
| a PyTorch file that would run code | test_pickled_code_is_refused_without_running |
| an interrupted run (SIGTERM, SIGINT, SIGKILL, half-written checkpoint) | tests/test_reliability.py |
| a non-finite loss | tests/test_reliability.py |
"""

import errno
import hashlib
import json
import pathlib
import zipfile

import jax.numpy as jnp
import pytest
import torch

from megathread_jax import config_base, models, train
from megathread_jax.convert.__main__ import main as convert_main
from megathread_jax.data import cache, tiny_imagenet
from megathread_jax.errors import CheckpointSaveError, DataNotFoundError
from tests.data.test_tiny_imagenet import _fake_files, _write_zip
from tests.test_main import ROOT, TINY_DEMO, run_main


def _tree(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _run_on_data(data_dir: pathlib.Path, workdir: pathlib.Path):
    return run_main(
        "--config=configs/mobilevit.py:scratch_64",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.download=False",
    )


def _refusal(result, workdir) -> str:
    """The error message of a run that must have stopped with exit code 1, no traceback, no workdir."""
    assert result.returncode == 1, result.stdout[-1000:] + result.stderr[-1000:]
    assert "Traceback" not in result.stderr and "\nerror: " in "\n" + result.stderr
    assert not workdir.exists()
    return result.stderr.split("error: ", 1)[1]


def test_truncated_zip(tmp_path):
    zip_path = _write_zip(tmp_path / tiny_imagenet.ZIP_NAME)
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    message = _refusal(_run_on_data(tmp_path, tmp_path / "run"), tmp_path / "run")
    assert "not a complete zip" in message and "delete it" in message


def test_bad_jpeg(tmp_path):
    files = _fake_files()
    files["val/images/val_3.JPEG"] = b"\xff\xd8 not really a jpeg"
    with zipfile.ZipFile(tmp_path / tiny_imagenet.ZIP_NAME, "w") as z:
        for rel, data in files.items():
            z.writestr(f"tiny-imagenet-200/{rel}", data)
    message = _refusal(_run_on_data(tmp_path, tmp_path / "run"), tmp_path / "run")
    assert "val/images/val_3.JPEG is not a readable image (unrecognised image data)" in message
    assert not (tmp_path / "cache_v1").exists()


def test_stale_cache_is_rebuilt(tmp_path, capsys):
    _write_zip(tmp_path / tiny_imagenet.ZIP_NAME)
    stale = tiny_imagenet.load(tmp_path, download_if_missing=False)
    stale["train_images"] = stale["train_images"][:, :32, :32]  # e.g. written by another version
    cache.save_arrays(tmp_path / "cache_v1", stale)
    arrays = tiny_imagenet.load(tmp_path, download_if_missing=False)
    assert arrays["train_images"].shape[1:] == (64, 64, 3) and "stale or damaged" in capsys.readouterr().out


def test_damaged_cache_without_source(tmp_path):
    _write_zip(tmp_path / tiny_imagenet.ZIP_NAME)
    tiny_imagenet.load(tmp_path, download_if_missing=False)
    (tmp_path / tiny_imagenet.ZIP_NAME).unlink()
    damaged = tmp_path / "cache_v1" / "val_images.npy"
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short, e.g. by a full disk
    assert "Tiny ImageNet not found" in _refusal(_run_on_data(tmp_path, tmp_path / "run"), tmp_path / "run")


def test_workdir_of_another_model(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "run.json").write_text(json.dumps({"model": "mobilenet_v2", "num_classes": 10, "data": "cifar10"}))
    (workdir / "checkpoints" / "100").mkdir(parents=True)
    (workdir / "checkpoints" / "100" / "state").write_text("another run's checkpoint")
    before = _tree(workdir)
    result = run_main("--config=configs/mobilevit.py:demo", f"--workdir={workdir}", *TINY_DEMO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds a run of another model" in result.stderr and "another --workdir" in result.stderr
    assert _tree(workdir) == before


def test_interrupted_download_leaves_nothing_then_refetches_and_checks(tmp_path, monkeypatch):
    served = _write_zip(tmp_path / "served.zip").read_bytes()
    monkeypatch.setattr(tiny_imagenet, "ZIP_BYTES", len(served))
    monkeypatch.setattr(tiny_imagenet, "ZIP_MD5", hashlib.md5(served).hexdigest())

    class Response:
        def __init__(self, cut: bool):
            self.chunks, self.cut, self.headers = [served[: len(served) // 2], served[len(served) // 2 :]], cut, {}

        def read(self, size):
            if not self.chunks:
                return b""
            if self.cut and len(self.chunks) == 1:
                raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
            return self.chunks.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    data_dir = tmp_path / "data"
    monkeypatch.setattr(tiny_imagenet.urllib.request, "urlopen", lambda url, timeout: Response(cut=True))
    with pytest.raises(DataNotFoundError, match="download failed"):
        tiny_imagenet.download(data_dir)
    assert list(data_dir.iterdir()) == []  # the partial file is gone; the next run starts over
    monkeypatch.setattr(tiny_imagenet.urllib.request, "urlopen", lambda url, timeout: Response(cut=False))
    assert tiny_imagenet.download(data_dir).read_bytes() == served  # size and MD5 checked


def test_wrong_channels_or_dtype():
    model = models.create("mobilevit_xxs", num_classes=10)
    with pytest.raises(ValueError, match="3 channels"):
        model(jnp.zeros((1, 32, 32, 4)))
    with pytest.raises(ValueError, match="float images, got uint8"):
        model(jnp.zeros((1, 32, 32, 3), jnp.uint8))
    with pytest.raises(ValueError, match="float images"):
        models.create("mobilenet_v2", num_classes=10, width_mult=0.35)(jnp.zeros((1, 32, 32, 3), jnp.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        models.create("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=50)(jnp.zeros((1, 4), jnp.float32))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = config_base.load_config(
        ROOT / "configs/mobilevit.py:demo",
        {
            "num_epochs": 1,
            "data.train_size": 128,
            "data.val_size": 64,
            "batch_size": 32,
            "eval_batch_size": 32,
            "checkpoint_every_steps": 2,
        },
    )
    saves = []
    original = train.checkpoints.ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        saves.append(step)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(train.checkpoints.ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointSaveError, match=r"step 4 .*No space left.*previous checkpoint \(step 2\) is kept"):
        train.train_and_evaluate(config, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


class _RunsCode:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(_RunsCode.marker),))


def test_pickled_code_is_refused_without_running(tmp_path, capsys):
    _RunsCode.marker = str(tmp_path / "the file ran code")
    torch.save({"conv.weight": torch.zeros(1), "payload": _RunsCode()}, tmp_path / "evil.pth")
    code = convert_main(
        [
            "--model",
            "mobilevit_xxs",
            "--source",
            "timm",
            "--weights",
            str(tmp_path / "evil.pth"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1 and "refused" in capsys.readouterr().err
    assert not (tmp_path / "the file ran code").exists() and not (tmp_path / "out").exists()
