"""Which parameters train, from when, and how fast: parameter-path rules turned into an optax
partition, for any model.

Patterns are dotted path prefixes with integer ranges: `features.[0-13]` matches
`features.0...` through `features.13...`; `features` matches the whole backbone. Config fields:

  freeze          "PATTERN,..."          frozen for the whole run
  unfreeze        "PATTERN@EPOCH,..."    frozen until EPOCH (gradual unfreezing)
  lr_multipliers  "PATTERN=MULT,..."     learning rate scaled by MULT (e.g. a slower backbone)

A frozen parameter gets no update (optax.set_to_zero: it stays bit-identical), and every module
under a frozen pattern runs in inference mode, so its batch-norm statistics are frozen too. Until
it is unfrozen, a group gets no gradient and its optimizer state waits: that state starts at the
group's first step.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx

from megathread_jax.errors import ConfigurationError

FROZEN = "frozen"


@dataclasses.dataclass(frozen=True)
class PathPattern:
    """A parameter-path pattern as the user wrote it (`text`) and as matched (`regex`)."""

    text: str
    regex: re.Pattern

    def match(self, path: str) -> re.Match | None:
        return self.regex.match(path)


def compile_pattern(pattern: str) -> PathPattern:
    """`features.[0-13]` -> a pattern matching that path prefix (whole path components only)."""
    parts = []
    for piece in re.split(r"(\[\d+-\d+\])", pattern.strip()):
        if re.fullmatch(r"\[\d+-\d+\]", piece):
            low, high = map(int, piece[1:-1].split("-"))
            if low > high:
                raise ConfigurationError(f"empty range {piece} in parameter pattern {pattern!r}")
            parts.append("(?:" + "|".join(str(i) for i in range(low, high + 1)) + ")")
        else:
            parts.append(re.escape(piece))
    return PathPattern(pattern.strip(), re.compile("^" + "".join(parts) + r"(?:\.|$)"))


def split_items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _split(item: str, separator: str, field: str) -> tuple[str, float]:
    pattern, sep, value = item.rpartition(separator)
    try:
        if not sep or not pattern:
            raise ValueError
        return pattern, float(value)
    except ValueError:
        raise ConfigurationError(f"config.{field}: {item!r} is not PATTERN{separator}NUMBER") from None


@dataclasses.dataclass(frozen=True)
class Group:
    """Parameters that share a learning-rate multiplier and a first trained epoch."""

    lr_multiplier: float = 1.0
    start_epoch: float = 0.0
    frozen: bool = False


@dataclasses.dataclass(frozen=True)
class FreezePlan:
    freeze: tuple[PathPattern, ...] = ()
    unfreeze: tuple[tuple[PathPattern, float], ...] = ()
    lr_multipliers: tuple[tuple[PathPattern, float], ...] = ()
    # When set, only parameters under these patterns train (LoRA's adapters); the others are frozen
    # in the optimizer only, so their modules keep training mode (dropout).
    train_only: tuple[PathPattern, ...] = ()

    @classmethod
    def from_config(cls, config) -> FreezePlan:
        return cls(
            freeze=tuple(compile_pattern(p) for p in split_items(config.freeze)),
            unfreeze=tuple(
                (compile_pattern(p), e) for p, e in (_split(i, "@", "unfreeze") for i in split_items(config.unfreeze))
            ),
            lr_multipliers=tuple(
                (compile_pattern(p), m)
                for p, m in (_split(i, "=", "lr_multipliers") for i in split_items(config.lr_multipliers))
            ),
        )

    @property
    def is_trivial(self) -> bool:
        return not (self.freeze or self.unfreeze or self.lr_multipliers or self.train_only)

    def group_of(self, path: str) -> Group:
        outside_trained = self.train_only and not any(p.match(path) for p in self.train_only)
        if outside_trained or any(p.match(path) for p in self.freeze):
            return Group(frozen=True)
        start = next((e for p, e in self.unfreeze if p.match(path)), 0.0)
        mult = next((m for p, m in self.lr_multipliers if p.match(path)), 1.0)
        return Group(lr_multiplier=mult, start_epoch=start, frozen=mult == 0)

    def differentiated_at(self, epoch: float) -> Any:
        """The nnx filter of the parameters that need gradients at `epoch`
        (`make_train_step(differentiate=)`): those trained then. A group unfrozen later gets no
        gradient, so before it trains the backward pass stops where it starts."""
        if self.is_trivial:
            return nnx.Param
        return nnx.All(nnx.Param, lambda path, _value: self.trains_at(dotted_path(path), epoch))

    def trains_at(self, path: str, epoch: float) -> bool:
        """Whether the parameter at dotted `path` is updated at `epoch` (its group's optimizer runs)."""
        group = self.group_of(path)
        return not group.frozen and epoch >= group.start_epoch

    @property
    def differentiated(self) -> Any:
        """The parameters that need gradients in the last phase, when the most of them train."""
        return self.differentiated_at(math.inf)

    def frozen_patterns(self, epoch: float) -> tuple[PathPattern, ...]:
        """Patterns frozen at `epoch`; the tuple changes only when a group is unfrozen."""
        return self.freeze + tuple(p for p, start in self.unfreeze if epoch < start)

    def check_matches(self, params: nnx.State) -> None:
        """Every pattern must match some parameter: a typo would otherwise freeze nothing."""
        paths = [dotted_path(path) for path, _ in nnx.to_flat_state(params)]
        patterns = list(self.freeze) + [p for p, _ in self.unfreeze] + [p for p, _ in self.lr_multipliers]
        for pattern in patterns:
            if not any(pattern.match(path) for path in paths):
                tops = ", ".join(sorted({path.split(".")[0] for path in paths}))
                raise ConfigurationError(
                    f"parameter pattern {pattern.text!r} matches no parameter of the model; its parameter "
                    f"paths start with {tops} (e.g. {paths[0].rsplit('.', 1)[0]})"
                )


def dotted_path(path: tuple) -> str:
    """`("transformer", "h", 0, "attn")` -> `"transformer.h.0.attn"`: what the patterns match."""
    return ".".join(str(p) for p in path)


def label_params(plan: FreezePlan, params: nnx.State) -> tuple[Any, dict[str, Group]]:
    """A pytree of group labels shaped like `params`, and the group of each label."""
    groups: dict[str, Group] = {}

    def label(key_path, _):
        # nnx.State key paths: DictKey per module/attribute, then the Variable's `.value`.
        path = tuple(k.key for k in key_path if isinstance(k, jax.tree_util.DictKey))
        group = plan.group_of(dotted_path(path))
        name = FROZEN if group.frozen else f"lr_x{group.lr_multiplier:g}_from_epoch_{group.start_epoch:g}"
        groups[name] = group
        return name

    labels = jax.tree_util.tree_map_with_path(label, params)
    return labels, groups


def first_step_of_epoch(epoch: float, steps_per_epoch: int) -> int:
    """The first step `s` with `s / steps_per_epoch >= epoch`: where the trainer's phase (frozen
    modules, gradients) changes, so a group's optimizer starts at the same step."""
    step = math.ceil(epoch * steps_per_epoch)
    return step - 1 if step and (step - 1) / steps_per_epoch >= epoch else step


def partitioned_optimizer(
    plan: FreezePlan,
    params: nnx.State,
    schedule: optax.Schedule,
    steps_per_epoch: int,
    make_base: Callable[[optax.Schedule], optax.GradientTransformation],
) -> optax.GradientTransformation:
    """`make_base(schedule)` per group, with the group's multiplier and start; frozen: no update."""
    labels, groups = label_params(plan, params)

    def group_optimizer(group: Group) -> optax.GradientTransformation:
        if group.frozen:
            return optax.set_to_zero()
        start_step = first_step_of_epoch(group.start_epoch, steps_per_epoch)
        if not start_step:
            return make_base(lambda step: group.lr_multiplier * schedule(step))
        # Until its first step the group's updates are zero and its optimizer state untouched: it
        # starts fresh when the group is unfrozen (its step count, so bias correction, too), as a
        # PyTorch optimizer starts a parameter's state at its first gradient. Its count then runs
        # `start_step` behind the run's, hence the shifted schedule.
        delayed = make_base(lambda step: group.lr_multiplier * schedule(step + start_step))
        return optax.conditionally_mask(delayed, lambda count: count >= start_step)

    return optax.multi_transform({name: group_optimizer(group) for name, group in groups.items()}, labels)


def apply_inference_mode(model: nnx.Module, frozen: tuple[PathPattern, ...]) -> None:
    """Every module: training mode, except those under a frozen pattern (batch norm uses and
    keeps its running statistics, dropout is off)."""
    model.train()
    for path, module in model.iter_modules():
        if path and any(p.match(dotted_path(path)) for p in frozen):
            module.set_attributes(use_running_average=True, deterministic=True, raise_if_not_found=False)


def count_parameters(plan: FreezePlan, params: nnx.State, epoch: float) -> tuple[int, int]:
    """(trainable, frozen) parameter counts at `epoch`."""
    trainable = frozen = 0
    for path, variable in nnx.to_flat_state(params):
        size = variable.get_value().size
        if plan.trains_at(dotted_path(path), epoch):
            trainable += size
        else:
            frozen += size
    return trainable, frozen
