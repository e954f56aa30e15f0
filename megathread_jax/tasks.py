"""What a run learns: its data, loss and metrics. One training loop (`train.py`) serves every task.

A task gives the loop batches by step (a pure function of the step, for exact resume), the loss
of a model on a batch, evaluation batches and how to sum and summarise them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from megathread_jax import data, generate
from megathread_jax.data import augment, text
from megathread_jax.errors import ConfigurationError, UserError

Batch = dict[str, np.ndarray]


def classification_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy in float32 against label-smoothed one-hot targets."""
    logits = logits.astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def classification_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Sums over the batch (masked rows excluded): loss, top-1 and top-5 hits, example count."""
    logits = logits.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones(labels.shape, bool)
    weight = mask.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    k = min(5, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    top1 = top_k[:, 0] == labels
    top5 = jnp.any(top_k == labels[:, None], axis=-1)
    return {
        "loss": jnp.sum(loss * weight),
        "top1": jnp.sum(top1 * weight),
        "top5": jnp.sum(top5 * weight),
        "count": jnp.sum(weight),
    }


def next_token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy (float32) of `targets` under `logits` (already aligned)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def next_token_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy (float32) of predicting tokens[:, 1:] from logits[:, :-1]; `mask` (B, T)
    marks the target tokens that count."""
    losses = next_token_losses(logits[:, :-1], tokens[:, 1:])
    weight = jnp.ones_like(losses) if mask is None else mask[:, 1:].astype(jnp.float32)
    return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _next_token_losses_and_hits(model, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy and argmax hits of predicting tokens[:, 1:] from tokens[:, :-1]."""
    logits = model(tokens[:, :-1])
    return next_token_losses(logits, tokens[:, 1:]), jnp.argmax(logits, -1) == tokens[:, 1:]


def _means(totals: dict[str, Any]) -> dict[str, float]:
    totals = dict(totals)
    n = max(float(totals.pop("count")), 1.0)
    return {k: float(v) / n for k, v in totals.items()}


class ImageClassification:
    """Images in memory as uint8, augmented on the device; label-smoothed cross-entropy; top-1/top-5."""

    best_metric, best_mode, throughput_unit = "top1", "max", "images"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.dataset = data.load(config.data)
        self.name = self.dataset.name
        self.is_builtin_demo = self.dataset.is_builtin_demo
        self.num_train_examples = len(self.dataset.train_labels)
        self.num_val_examples = len(self.dataset.val_labels)
        self.model_kwargs = {"num_classes": self.dataset.num_classes}
        self.identity = {"num_classes": self.dataset.num_classes, "data": config.data.name}
        mean, std = data.NORMALISATIONS[config.data.normalisation]
        d = config.data
        # What `predict` needs to classify a new image as validation did.
        self.weights_meta: dict[str, Any] = {
            "class_names": list(self.dataset.class_names),
            "preprocess": {
                "image_size": self.dataset.val_images.shape[1],
                "resolution": d.resolution,
                "mean": mean,
                "std": std,
            },
        }
        self._train_preprocess = functools.partial(
            augment.train_preprocess,
            resolution=d.resolution,
            crop=d.crop,
            crop_scale=tuple(d.crop_scale),
            pad=d.crop_padding,
            mean=mean,
            std=std,
        )
        self._eval_preprocess = functools.partial(augment.eval_preprocess, resolution=d.resolution, mean=mean, std=std)

    def examples_per_step(self, batch_size: int) -> int:
        return batch_size

    def train_batch(self, step: int) -> Batch:
        idx = data.train_indices(
            step, num_examples=self.num_train_examples, batch_size=self.config.batch_size, seed=self.config.seed
        )
        return {"image": self.dataset.train_images[idx], "label": self.dataset.train_labels[idx]}

    def loss(self, model, batch: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model(self._train_preprocess(batch["image"], key))
        loss = classification_loss(logits, batch["label"], self.config.label_smoothing)
        return loss, {"top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    def eval_batches(self) -> Iterator[Batch]:
        return data.eval_batches(self.dataset.val_images, self.dataset.val_labels, self.config.eval_batch_size)

    def eval_sums(self, model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return classification_counts(model(self._eval_preprocess(batch["image"])), batch["label"], batch["mask"])

    def summarise(self, totals: dict[str, Any]) -> dict[str, float]:
        return _means(totals)

    def predict(self, model) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predicted labels) of the validation images, preprocessed as in evaluation."""
        model.eval()
        graphdef, state = nnx.split(model)

        @jax.jit
        def predicted(state, images):
            return jnp.argmax(nnx.merge(graphdef, state)(self._eval_preprocess(images)), axis=-1)

        batches = list(self.eval_batches())
        guesses = np.concatenate([np.asarray(predicted(state, b["image"]))[b["mask"]] for b in batches])
        return self.dataset.val_labels, guesses

    def check_model(self, model) -> None:
        pass

    def final_report(self, model) -> str:
        return ""


class LanguageModelling:
    """Packed token windows of a text corpus; next-token cross-entropy; validation perplexity over
    sliding windows (`data.eval_stride` < `data.seq_len` gives every scored token more context)."""

    best_metric, best_mode, throughput_unit = "perplexity", "min", "tokens"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.dataset = text.load(config.data)
        self.tokenizer = self.dataset.tokenizer
        self.name = self.dataset.name
        self.is_builtin_demo = self.dataset.is_builtin_demo
        self.seq_len = config.data.seq_len
        self.stride = config.data.eval_stride or self.seq_len
        self.num_train_examples = text.num_train_windows(self.dataset.train_tokens, self.seq_len)
        self.num_val_examples = len(text.sliding_windows(len(self.dataset.val_tokens), self.seq_len, self.stride))
        if self.num_val_examples == 0:
            raise UserError(f"the validation text of {self.name} has fewer than 2 tokens")
        eos = self.tokenizer.eos_token_id
        self.model_kwargs = {"vocab_size": self.tokenizer.vocab_size, "bos_token_id": eos, "eos_token_id": eos}
        self.identity = {
            "vocab_size": self.tokenizer.vocab_size,
            "tokenizer": self.tokenizer.name,
            "data": config.data.name,
        }
        self.weights_meta = {"tokenizer": self.tokenizer.name}

    def examples_per_step(self, batch_size: int) -> int:
        return batch_size * self.seq_len

    def train_batch(self, step: int) -> Batch:
        idx = data.train_indices(
            step, num_examples=self.num_train_examples, batch_size=self.config.batch_size, seed=self.config.seed
        )
        return {"tokens": text.train_window(self.dataset.train_tokens, idx, self.seq_len)}

    def loss(self, model, batch: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        losses, hits = _next_token_losses_and_hits(model, batch["tokens"])
        return jnp.mean(losses), {"accuracy": jnp.mean(hits)}

    def eval_batches(self) -> Iterator[Batch]:
        return text.eval_batches(
            self.dataset.val_tokens, length=self.seq_len, stride=self.stride, batch_size=self.config.eval_batch_size
        )

    def eval_sums(self, model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        weight = batch["mask"][:, 1:].astype(jnp.float32)
        losses, hits = _next_token_losses_and_hits(model, batch["tokens"])
        return {"loss": jnp.sum(losses * weight), "accuracy": jnp.sum(hits * weight), "count": jnp.sum(weight)}

    def summarise(self, totals: dict[str, Any]) -> dict[str, float]:
        metrics = _means(totals)
        metrics["perplexity"] = float(np.exp(metrics["loss"]))
        return metrics

    def check_model(self, model) -> None:
        if self.seq_len > model.config.n_positions:
            raise ConfigurationError(
                f"data.seq_len={self.seq_len} exceeds the model's {model.config.n_positions} positions"
            )

    def final_report(self, model) -> str:
        """A sample from the trained model (config.sample_prompt, config.sample_tokens new tokens)."""
        prompt = self.tokenizer.encode(self.config.sample_prompt) or [self.tokenizer.eos_token_id]
        new_tokens = min(self.config.sample_tokens, model.config.n_positions - len(prompt))
        if new_tokens < 1:
            return ""
        out = generate.generate(
            model,
            np.asarray([prompt]),
            max_new_tokens=new_tokens,
            do_sample=True,
            top_k=self.config.sample_top_k or None,
            seed=self.config.seed,
        )
        return f"sample:\n{self.tokenizer.decode(out[0].tolist())}"


TASKS = {"image_classification": ImageClassification, "language_modelling": LanguageModelling}


def create(config: ml_collections.ConfigDict) -> ImageClassification | LanguageModelling:
    if config.task not in TASKS:
        raise ConfigurationError(f"unknown task {config.task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[config.task](config)
