"""Orbax checkpoints: the latest N train states for resume, the best by a metric kept apart;
weights directories (written by the converter and at the end of a run, read by the trainer, the
converter and `generate`); and where `init_from` points (a directory, or published weights
converted once into a local cache)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from megathread_jax import convert, models
from megathread_jax.errors import (
    CheckpointMismatchError,
    CheckpointSaveError,
    WeightsNotFoundError,
    WorkdirConflictError,
)

RUN_FILE = "run.json"  # what the data set makes of the model: classes, vocabulary
CONFIG_FILE = "config.json"  # the resolved config, one dotted field per key
WEIGHTS_META = "model.json"
WEIGHTS_CACHE = pathlib.Path("~/.cache/megathread_jax/weights").expanduser()
FINAL_WEIGHTS = "weights"  # <workdir>/weights: the final model, readable by convert, generate and init_from


class CheckpointStore:
    """`<workdir>/checkpoints` (latest `keep` states) and `<workdir>/best` (best by `best_metric`)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, best_metric: str, best_mode: str = "max"):
        workdir = pathlib.Path(workdir).absolute()
        self.best_metric = best_metric
        self._closed = False
        # Saving in the background overlaps training on one process; across processes (seen on CPU
        # with gloo) orbax's background commit barriers can wait on each other forever, so save in line.
        asynchronous = jax.process_count() == 1
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
            ),
        )
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                best_fn=lambda m: m[best_metric],
                best_mode=best_mode,
                enable_async_checkpointing=asynchronous,
            ),
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, abstract_state: Any) -> Any:
        step = self.latest.latest_step()
        try:
            return self.latest.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except (ValueError, KeyError) as e:
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.latest.directory} does not fit this model/config "
                f"({str(e).splitlines()[0][:300]}); use another --workdir"
            ) from None

    def save(self, step: int, state: Any, *, metrics: dict[str, float] | None = None, weights: Any = None) -> None:
        try:
            self.latest.save(step, args=ocp.args.StandardSave(state), force=True)
            if metrics is not None and weights is not None:
                self.best.save(step, args=ocp.args.StandardSave(weights), metrics=metrics, force=True)
        except OSError as e:  # a full disk, a lost mount: orbax only renames complete checkpoints into place
            raise CheckpointSaveError(
                f"could not save the checkpoint of step {step} in {self.latest.directory} ({e}); the previous "
                f"checkpoint (step {self.latest_step()}) is kept. Free space and rerun the same command to resume."
            ) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()


def _differences(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        k: (previous.get(k), current.get(k))
        for k in sorted(current.keys() | previous.keys())
        if previous.get(k) != current.get(k)
    }


def _shown(differences: dict[str, tuple[Any, Any]], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{k}: {old!r} -> {new!r}" for k, (old, new) in differences.items())


def record_run(
    workdir: pathlib.Path, identity: dict[str, Any], config: dict[str, Any], resumable: Iterable[str]
) -> None:
    """Refuses a workdir holding a run of another model or shape, or one whose config differs in a
    field that changes the training trajectory (any field not in `resumable`); records the
    identity and the resolved config (`config` as flat dotted fields) otherwise."""
    identity_path, config_path = workdir / RUN_FILE, workdir / CONFIG_FILE
    if identity_path.is_file():
        changed = _differences(json.loads(identity_path.read_text()), identity)
        if changed:
            raise WorkdirConflictError(
                f"{workdir} holds a run of another model or shape ({_shown(changed)}); use another --workdir"
            )
    config = json.loads(json.dumps(config))  # tuples as the file holds them: lists
    if config_path.is_file():
        allowed = set(resumable)
        changed = {
            k: v for k, v in _differences(json.loads(config_path.read_text()), config).items() if k not in allowed
        }
        if changed:
            raise WorkdirConflictError(
                f"{workdir} holds a run with other settings ({_shown(changed, 'config.')}); rerun without "
                "those changes to resume it, or use a new --workdir (add --config.init_from="
                f"{workdir / FINAL_WEIGHTS} to start from its final weights)"
            )
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        identity_path.write_text(json.dumps(identity, indent=1))
        config_path.write_text(json.dumps(config, indent=1))


def weights_meta(model_name: str, model: nnx.Module, **extra: Any) -> dict[str, Any]:
    """What `model.json` records: the model name, the kwargs that rebuild its shape, and `extra`."""
    return {"model": model_name, "model_kwargs": model.shape_kwargs(), **extra}


def save_weights(directory: str | pathlib.Path, model: nnx.Module, meta: dict[str, Any]) -> pathlib.Path:
    """Writes the model's parameters and statistics plus `model.json` (see `weights_meta`)."""
    return save_arrays(directory, models.weight_state(model), meta)


def save_arrays(
    directory: str | pathlib.Path, state: nnx.State, meta: dict[str, Any], *, meta_file: str = WEIGHTS_META
) -> pathlib.Path:
    """Writes `state`'s arrays (orbax, in `weights/`) and `meta` as `meta_file` into `directory`."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "weights", nnx.to_pure_dict(state), force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        (directory / meta_file).write_text(json.dumps(meta, indent=1))
    return directory


def read_meta(directory: str | pathlib.Path, *, meta_file: str = WEIGHTS_META) -> dict[str, Any]:
    """The `model.json` (or `meta_file`) of a directory written by `save_weights` (`save_arrays`)."""
    directory = pathlib.Path(directory).expanduser().absolute()
    if not (directory / meta_file).is_file():
        what = "converted weights" if meta_file == WEIGHTS_META else "saved arrays"
        raise WeightsNotFoundError(f"no {what} in {directory} (no {meta_file})")
    return json.loads((directory / meta_file).read_text())


def read_weights(
    directory: str | pathlib.Path, *, meta_file: str = WEIGHTS_META
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, nested dict of arrays) from a directory written by `save_weights` (`save_arrays`)."""
    directory = pathlib.Path(directory).expanduser().absolute()
    meta = read_meta(directory, meta_file=meta_file)
    checkpointer = ocp.StandardCheckpointer()
    # Restored onto this process's first device, whatever mesh wrote them (e.g. a multi-host run).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        checkpointer.metadata(directory / "weights").item_metadata.tree,
    )
    return meta, checkpointer.restore(directory / "weights", target)


def model_from_weights(directory: str | pathlib.Path, **overrides: Any) -> tuple[nnx.Module, dict[str, Any]]:
    """(model, meta) rebuilt from a directory written by `save_weights`; `overrides` change how it
    computes (e.g. dtype), never its shape."""
    meta = read_meta(directory)
    try:
        model = models.create(meta["model"], **{**meta["model_kwargs"], **overrides})
    except KeyError as e:
        raise CheckpointMismatchError(f"{directory}/{WEIGHTS_META} lacks {e}; convert the weights again") from None
    load_weights_into(model, meta["model"], directory)
    model.eval()
    return model, meta


def load_weights_into(
    model: nnx.Module, model_name: str, directory: str | pathlib.Path, *, skip_prefixes: Iterable[str] = ()
) -> int:
    """Copies converted weights into `model`, except paths under `skip_prefixes` (e.g. a new head).

    Every other parameter and statistic must be present with the same shape. Returns the count of
    arrays copied.
    """
    meta, weights = read_weights(directory)
    if meta.get("model") != model_name:
        raise CheckpointMismatchError(f"{directory} holds weights of {meta.get('model')!r}, not {model_name!r}")
    flat_weights = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.State(weights))}
    skip = tuple(skip_prefixes)
    copied = 0
    problems = []
    for path, variable in nnx.to_flat_state(models.weight_state(model)):
        key = ".".join(map(str, path))
        if skip and key.startswith(skip):
            continue
        if key not in flat_weights:
            problems.append(f"missing {key}")
            continue
        value = np.asarray(flat_weights[key])
        if value.shape != variable.get_value().shape:
            problems.append(f"{key}: {value.shape} vs model {variable.get_value().shape}")
            continue
        variable.set_value(jnp.array(value, dtype=variable.get_value().dtype, copy=True))
        copied += 1
    if problems:
        raise CheckpointMismatchError(f"weights in {directory} do not fit {model_name}: " + "; ".join(problems[:10]))
    return copied


def pretrained_dir(model_name: str, init_from: str, *, then: str = "") -> pathlib.Path:
    """Where the weights named by `init_from` are: a directory written by the converter, or a
    weight source ("timm", "hf", "torchvision", optionally ":TAG", e.g. "torchvision:IMAGENET1K_V1")
    for the published ImageNet weights, converted once into a local cache. `then` ends the message
    of a failed download: how the calling command goes on from a converted directory DIR."""
    source, _, tag = init_from.partition(":")
    if source not in convert.sources(model_name):
        return pathlib.Path(init_from).expanduser()
    directory = WEIGHTS_CACHE / f"{model_name}_{source}{'_' + tag if tag else ''}"
    if (directory / WEIGHTS_META).is_file():
        return directory
    try:
        state_dict = convert.fetch(model_name, source, tag or None)
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(f"{e} {then}" if then else str(e)) from None
    model = convert.from_torch(model_name, state_dict, source=source)
    meta = weights_meta(model_name, model, source=init_from, **convert.classifier_meta(model_name, model))
    save_weights(directory, model, meta)
    return directory


def weights_directory(path: str | pathlib.Path) -> pathlib.Path:
    """The weights directory that `path` names: a training workdir's final weights, or `path` itself."""
    directory = pathlib.Path(path).expanduser()
    nested = directory / FINAL_WEIGHTS
    return nested if (nested / WEIGHTS_META).is_file() else directory
