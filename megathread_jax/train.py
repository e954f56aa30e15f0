"""The one training loop: task (data, loss, metrics) -> model -> jitted train/eval steps over a
device mesh -> checkpoints and metrics. Tasks differ only in what `tasks.py` defines."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

from megathread_jax import (
    checkpoints,
    config_base,
    config_fields,
    freezing,
    lora,
    models,
    optim,
    parallel,
    progress,
    tasks,
)
from megathread_jax.errors import ConfigurationError, StoppedBySignal, UserError
from megathread_jax.loss_scale import DynamicLossScale
from megathread_jax.metrics import MetricWriter


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State  # nnx.Param leaves: what the optimizer updates
    rest: nnx.State  # batch statistics and RNG state
    opt_state: Any
    loss_scale: DynamicLossScale | None = None  # float16 compute only
    ema_params: nnx.State | None = None  # exponential moving average of `params` (ema_decay > 0 only)


# ----------------------------------------------------------------------------------------------
# Model and pretrained weights
# ----------------------------------------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict, task_kwargs: dict[str, Any]) -> nnx.Module:
    """The configured model with the task's shape (classes, vocabulary), from `init_from` if set.

    Pretrained weights bring their own shape (layers, widths), which `config.model` can change in how
    it computes (dtype, dropout, ...) but not in size; an image model's classifier stays freshly
    initialised for the new label set.
    """
    directory = (
        checkpoints.pretrained_dir(
            config.model.name,
            config.init_from,
            then="Then train from it with --config.init_from=DIR, or from scratch with --config.init_from=''",
        )
        if config.init_from
        else None
    )
    pretrained_shape = checkpoints.read_meta(directory).get("model_kwargs", {}) if directory else {}
    kwargs = {**pretrained_shape, **{k: v for k, v in config.model.items() if k != "name"}, **task_kwargs}
    try:
        model = models.create(config.model.name, seed=config.seed, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"cannot build model {config.model.name!r} from config.model: {e}") from None
    if directory:
        head = getattr(model, "classifier_path", None)
        copied = checkpoints.load_weights_into(
            model, config.model.name, directory, skip_prefixes=(head,) if head else ()
        )
        fresh = f"; fresh {kwargs['num_classes']}-class {head}" if head else ""
        progress.message(f"initialised {copied} arrays from {directory}{fresh}")
    return model


def state_at_step_zero(
    params: nnx.State,
    rest: nnx.State,
    tx: optax.GradientTransformation,
    *,
    loss_scaled: bool = False,
    moving_average: bool = False,
) -> TrainState:
    """The train state before the first step (pure: `jax.eval_shape` gives its shapes)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        loss_scale=DynamicLossScale.create() if loss_scaled else None,
        ema_params=jax.tree.map(jnp.copy, params) if moving_average else None,
    )


def initial_state(
    params: nnx.State,
    rest: nnx.State,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    loss_scaled: bool = False,
    moving_average: bool = False,
) -> tuple[TrainState, Any]:
    """The train state at step 0 laid out over `mesh` by `parallel.state_shardings`, and that
    layout. The model's arrays are sent shard by shard; the optimizer state and the moving average
    are created in place, so no device ever holds more than its share of them."""
    create = functools.partial(state_at_step_zero, tx=tx, loss_scaled=loss_scaled, moving_average=moving_average)
    layout = parallel.state_shardings(jax.eval_shape(create, params, rest), mesh)
    placed = parallel.place((params, rest), (layout.params, layout.rest))
    return jax.jit(create, out_shardings=layout)(*placed), layout


# ----------------------------------------------------------------------------------------------
# Steps (pure functions of the state, compiled once)
# ----------------------------------------------------------------------------------------------
def _microbatches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
    """`(B, ...)` -> `(count, B / count, ...)`, microbatch i taking every count-th example from i,
    so each microbatch stays spread over the devices the batch is split across."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    task_loss: Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]],
    *,
    seed: int,
    skip_nonfinite: bool = False,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    differentiate: nnx.filterlib.Filter = nnx.Param,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted-to-be train step. With `skip_nonfinite`, a step whose loss, gradients or updated
    parameters are not finite leaves the state as it was (counted in `skipped_updates`). With
    `grad_accum_steps` N > 1 the batch is processed as N microbatches in sequence and their
    gradients averaged; batch statistics are updated microbatch by microbatch. A state with a
    `loss_scale` differentiates the scaled loss and skips (and counts) the updates whose gradients
    overflow, adjusting the scale either way. With `ema_decay` > 0 the state's `ema_params` follow
    the parameters: `ema <- decay * ema + (1 - decay) * params` after every applied update. Only
    the parameters matched by `differentiate` get gradients; the others' are zero without being
    computed (parameters frozen for the whole run or not unfrozen yet, LoRA's base weights)."""

    def loss_and_grads(params, rest, scale, batch, key):
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(model):
            loss, task_metrics = task_loss(model, batch, key)
            return (loss if scale is None else scale.scale_loss(loss)), (loss, task_metrics)

        (_, (loss, task_metrics)), grads = nnx.value_and_grad(
            loss_fn, has_aux=True, argnums=nnx.DiffState(0, differentiate)
        )(model)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return {"loss": loss, **task_metrics}, grads, rest

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        # The step is folded into the key so a resumed run draws the same augmentations.
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        scale = state.loss_scale
        if grad_accum_steps == 1:
            loss_metrics, grads, rest = loss_and_grads(state.params, state.rest, scale, batch, key)
        else:
            # The parameters ride in the carry (unchanged): nnx merges only values of one trace level.
            def accumulate(carry, microbatch_and_index):
                params, rest, metric_sums, grad_sums = carry
                microbatch, i = microbatch_and_index
                metrics, grads, rest = loss_and_grads(params, rest, scale, microbatch, jax.random.fold_in(key, i))
                sums = jax.tree.map(jnp.add, (metric_sums, grad_sums), (metrics, grads))
                return (params, rest, *sums), None

            microbatches = _microbatches(batch, grad_accum_steps)
            first = jax.tree.map(lambda x: x[0], microbatches)
            shapes = jax.eval_shape(loss_and_grads, state.params, state.rest, scale, first, key)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[:2])
            (_, rest, metric_sums, grad_sums), _ = jax.lax.scan(
                accumulate, (state.params, state.rest, *zeros), (microbatches, jnp.arange(grad_accum_steps))
            )
            loss_metrics, grads = jax.tree.map(lambda x: x / grad_accum_steps, (metric_sums, grad_sums))
        if differentiate is not nnx.Param:
            grads = nnx.merge_state(jax.tree.map(jnp.zeros_like, state.params), grads)
        if scale is not None:
            grads = scale.unscale(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **loss_metrics,
            "grad_norm": optax.global_norm(grads),
            "update_norm": optax.global_norm(updates),
            "param_norm": optax.global_norm(params),
        }
        loss = metrics["loss"]
        new_state = state.replace(step=state.step + 1, params=params, rest=rest, opt_state=opt_state)
        if ema_decay:
            # In this form a parameter that did not move (a frozen one) leaves its average exactly as it was.
            ema = jax.tree.map(lambda e, p: e + (1 - ema_decay) * (p - e), state.ema_params, params)
            new_state = new_state.replace(ema_params=ema)
        finite = None
        if skip_nonfinite:
            finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"]) & jnp.isfinite(metrics["param_norm"])
        elif scale is not None:
            finite = jnp.isfinite(metrics["grad_norm"])  # an overflow, expected now and then: skipped, not fatal
        if finite is not None:
            kept = state.replace(step=state.step + 1)
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
            if skip_nonfinite:
                metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
            else:
                # The loss is kept, so a loss that is itself not finite still stops the run.
                metrics.update({k: jnp.where(finite, metrics[k], 0.0) for k in ("grad_norm", "update_norm")})
                metrics["param_norm"] = optax.global_norm(new_state.params)
            metrics["skipped_updates"] = 1.0 - finite.astype(jnp.float32)
        if scale is not None:
            new_state = new_state.replace(loss_scale=scale.adjust(finite))
        return new_state, metrics

    return train_step


def phased_train_steps(
    model: nnx.Module,
    plan: freezing.FreezePlan,
    steps_per_epoch: int,
    make_step: Callable[[nnx.GraphDef, nnx.filterlib.Filter], Callable],
) -> Callable[[int], Callable]:
    """step -> the compiled train step for the modules frozen at that step.

    `make_step(graphdef, differentiate)` makes the step of one phase: frozen modules run in inference
    mode, which is part of the graph definition, and only the parameters trained in that phase get
    gradients, so each phase of gradual unfreezing compiles once.
    """
    compiled: dict[tuple[str, ...], Callable] = {}
    params = nnx.state(model, nnx.Param)

    def step_fn(step: int) -> Callable:
        epoch = step / steps_per_epoch
        frozen = plan.frozen_patterns(epoch)
        key = tuple(p.text for p in frozen)
        if key not in compiled:
            freezing.apply_inference_mode(model, frozen)
            graphdef, _, _ = nnx.split(model, nnx.Param, ...)
            compiled[key] = jax.jit(make_step(graphdef, plan.differentiated_at(epoch)), donate_argnums=0)
            trainable, frozen_count = freezing.count_parameters(plan, params, epoch)
            progress.message(f"from epoch {epoch:g}: {trainable:,} trainable and {frozen_count:,} frozen parameters")
        return compiled[key]

    return step_fn


def make_eval_step(graphdef: nnx.GraphDef, eval_sums: Callable[[nnx.Module, dict[str, jax.Array]], dict]):
    def eval_step(params: nnx.State, rest: nnx.State, batch: dict[str, jax.Array]):
        return eval_sums(nnx.merge(graphdef, params, rest), batch)

    return eval_step


def evaluate(eval_step, params: nnx.State, rest: nnx.State, task, mesh) -> dict[str, float]:
    totals = None
    for batch in task.eval_batches():
        sums = eval_step(params, rest, parallel.shard_batch(mesh, batch))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return task.summarise(jax.device_get(totals))


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
class StopRequest:
    """SIGTERM and SIGINT (Ctrl-C, a preempted machine) ask the loop to save and stop after the step
    in flight; the handlers are installed for the run's duration (main thread only)."""

    def __init__(self):
        self.signal: signal.Signals | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._request)

    def _request(self, signum, frame) -> None:
        self.signal = signal.Signals(signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _check_finite(step: int, metrics: dict[str, float]) -> None:
    bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
    if bad:
        raise UserError(
            f"non-finite {', '.join(bad)} at step {step}; stopping. The last good checkpoint is kept. "
            "Try a lower learning rate or float32 compute."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Trains and evaluates; a rerun with the same workdir resumes from the latest checkpoint.

    With `num_epochs=0` the run only evaluates the initial (e.g. `init_from`) weights.
    """
    workdir = pathlib.Path(workdir).expanduser().absolute()
    config_fields.check(config)  # before anything is read, downloaded or written
    parallel.maybe_initialize_distributed()

    # -- task: data, loss, metrics
    task = tasks.create(config)
    steps_per_epoch = task.num_train_examples // config.batch_size
    total_steps = config.num_epochs * steps_per_epoch
    if config.num_epochs and not steps_per_epoch:
        raise ConfigurationError(
            f"batch size {config.batch_size} is larger than the training set ({task.num_train_examples} examples)"
        )
    if jax.device_count() % config.parallel.fsdp:
        raise ConfigurationError(
            f"config.parallel.fsdp={config.parallel.fsdp} must divide the {jax.device_count()} devices"
        )
    mesh = parallel.make_mesh(fsdp=config.parallel.fsdp)
    for name, per in (("batch_size", config.grad_accum_steps), ("eval_batch_size", 1)):
        if config[name] % (jax.device_count() * per):
            split = f" x {per} microbatches (config.grad_accum_steps)" if per > 1 else ""
            raise ConfigurationError(
                f"config.{name}={config[name]} must be a multiple of the {jax.device_count()} devices{split}"
            )
    label = "built-in demo data" if task.is_builtin_demo else ""

    # -- model, optimizer, state
    model = build_model(config, task.model_kwargs)
    task.check_model(model)
    adapted = lora.add_configured_adapters(model, config)
    schedule = optim.learning_rate_schedule(config.optim, total_steps, max(steps_per_epoch, 1))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    plan = freezing.FreezePlan.from_config(config)
    plan.check_matches(params)
    if adapted:
        plan = dataclasses.replace(plan, train_only=lora.trainable_patterns(adapted))
        progress.message(f"LoRA rank {config.lora.rank} adapters on {len(adapted)} projections")
    # The last check: from here on the workdir is written.
    checkpoints.record_run(
        workdir,
        {"model": config.model.name, **task.identity},
        {path: config_fields.value_of(config, path) for path in config_base.field_paths(config)},
        resumable=config_fields.RESUMABLE_CHANGES,
    )
    if plan.is_trivial:
        tx = optim.make_optimizer(config.optim, schedule)
    else:
        tx = freezing.partitioned_optimizer(
            plan, params, schedule, steps_per_epoch, lambda s: optim.make_optimizer(config.optim, s)
        )
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    state, state_layout = initial_state(
        params, rest, tx, mesh, loss_scaled=config.model.dtype == "float16", moving_average=bool(config.ema_decay)
    )
    # The model keeps only the graph from here on: its arrays are the state's, which the steps donate.
    nnx.update(model, state.params, state.rest)
    del params, rest

    # -- checkpoints: resume if the workdir has one
    store = checkpoints.CheckpointStore(
        workdir, keep=config.keep_checkpoints, best_metric=task.best_metric, best_mode=task.best_mode
    )
    if store.latest_step() is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state = store.restore_latest(abstract)
        progress.message(f"resumed from step {int(state.step)} in {workdir}")

    train_step_for = phased_train_steps(
        model,
        plan,
        steps_per_epoch,
        lambda graphdef, differentiate: parallel.keep_layout(
            make_train_step(
                graphdef,
                tx,
                task.loss,
                seed=config.seed,
                skip_nonfinite=config.skip_nonfinite_updates,
                grad_accum_steps=config.grad_accum_steps,
                ema_decay=config.ema_decay,
                differentiate=differentiate,
            ),
            state_layout,
        ),
    )
    eval_step = jax.jit(make_eval_step(eval_graphdef, task.eval_sums))

    writer = MetricWriter(workdir, label=label)

    def validate(state: TrainState, step: int) -> tuple[dict[str, float], dict[str, float]]:
        """Validation metrics of the weights and, with `ema_decay`, of their moving average."""
        raw = evaluate(eval_step, state.params, state.rest, task, mesh)
        writer.write(step, "val", raw)
        if not config.ema_decay:
            return raw, {}
        averaged = evaluate(eval_step, state.ema_params, state.rest, task, mesh)
        writer.write(step, "val_ema", averaged)
        return raw, averaged

    start = int(state.step)
    state_bytes = parallel.bytes_on_first_device((state.params, state.opt_state))
    progress.message(
        f"{config.model.name}: {num_params:,} parameters on {jax.device_count()} {jax.default_backend()} "
        f"device(s), {state_bytes / 2**20:.2f} MiB of parameters and optimizer state on each (mesh "
        f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); {task.name}: {task.num_train_examples} train / "
        f"{task.num_val_examples} val examples; {steps_per_epoch} steps/epoch, {total_steps} steps"
    )

    # -- loop
    val_metrics: dict[str, float] = {}
    ema_metrics: dict[str, float] = {}
    interval_sums, interval_steps, interval_start = None, 0, time.perf_counter()
    stop = StopRequest()
    try:
        for step in progress.bar(
            range(start, total_steps),
            initial=start,
            total=total_steps,
            desc="train",
            unit="step",
            enabled=jax.process_index() == 0,
        ):
            batch = parallel.shard_batch(mesh, task.train_batch(step))
            state, metrics = train_step_for(step)(state, batch)
            interval_sums = metrics if interval_sums is None else jax.tree.map(jnp.add, interval_sums, metrics)
            interval_steps += 1
            done = step + 1
            end_of_epoch = done % steps_per_epoch == 0 or done == total_steps
            # Read once: a signal arriving later in this iteration is acted on after the next step, so
            # a stop always follows the save of its step.
            stop_signal = stop.signal
            save_now = (
                end_of_epoch
                or stop_signal is not None
                or (config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0)
            )
            # Metrics are read (and checked to be finite) before every save, so no NaN state is saved.
            if done % config.log_every_steps == 0 or save_now:
                means = {k: float(v) / interval_steps for k, v in jax.device_get(interval_sums).items()}
                _check_finite(done, means)
                if "skipped_updates" in means:
                    means["skipped_updates"] *= interval_steps  # a count, not a mean
                elapsed = time.perf_counter() - interval_start
                means[f"{task.throughput_unit}_per_sec"] = (
                    interval_steps * task.examples_per_step(config.batch_size) / elapsed
                )
                means["learning_rate"] = float(schedule(done - 1))  # the rate of the last step
                if state.loss_scale is not None:
                    means["loss_scale"] = float(state.loss_scale.scale)  # the scale the next step uses
                writer.write(done, "train", means)
                interval_sums, interval_steps, interval_start = None, 0, time.perf_counter()
            if end_of_epoch:
                val_metrics, ema_metrics = validate(state, done)
                store.save(done, state, metrics=val_metrics, weights={"params": state.params, "rest": state.rest})
                interval_start = time.perf_counter()
            elif save_now:
                store.save(done, state)
            if stop_signal:
                raise StoppedBySignal(
                    f"stopped by {stop_signal.name} after step {done}; a checkpoint of that step is "
                    f"saved in {workdir}. Rerun the same command to resume.",
                    stop_signal,
                )
    except BaseException:
        store.close()  # saves in flight (all of finite states) complete before the error is reported
        raise
    finally:
        stop.restore()

    if not val_metrics:  # nothing to train, or resumed after the last step: report the final state
        val_metrics, ema_metrics = validate(state, int(state.step))
    store.close()
    final_params, weights_from = state.params, "raw"
    if config.ema_decay:
        raw, averaged = val_metrics[task.best_metric], ema_metrics[task.best_metric]
        if (averaged > raw) if task.best_mode == "max" else (averaged < raw):
            final_params, weights_from, val_metrics = state.ema_params, "ema", ema_metrics
        chosen = "the moving average" if weights_from == "ema" else "the raw weights"
        progress.message(
            f"final weights are {chosen}: validation {task.best_metric} {averaged:.4g} averaged, {raw:.4g} raw"
        )
    nnx.update(model, final_params, state.rest)
    if adapted:
        adapter = lora.save_adapter(
            workdir / lora.ADAPTER_DIR, model, config.model.name, base=config.init_from, step=int(state.step)
        )
        lora.merge(model)
        if jax.process_index() == 0:
            progress.message(f"LoRA adapters: {adapter} (merged into the final weights)")
    meta = checkpoints.weights_meta(
        config.model.name, model, step=int(state.step), weights_from=weights_from, **task.weights_meta
    )
    # Every process takes part in the save.
    final_weights = checkpoints.save_weights(workdir / checkpoints.FINAL_WEIGHTS, model, meta)
    if jax.process_index() == 0:
        progress.message(f"final weights: {final_weights}")
        report = task.final_report(model)
        if report:
            progress.message(report)
    curves = writer.plot_curves()
    writer.close()
    if curves:
        progress.message(f"curves: {curves}")
    return val_metrics
