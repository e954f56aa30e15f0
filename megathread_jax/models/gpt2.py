"""GPT-2 with the module tree of Hugging Face's `GPT2LMHeadModel` (`transformer.h.N.attn.c_attn`, ...).

Parameters are float32; the compute dtype comes from the config, LayerNorm, softmax and the logits
stay float32. The token embedding is stored padded to a multiple of `vocab_pad_multiple` rows (the
tied output projection runs on an aligned width); the logits are sliced back to `vocab_size`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megathread_jax.errors import ConfigurationError
from megathread_jax.models.mixed_precision import einsum_float32_out

ATTENTION_IMPLS = ("xla", "cudnn")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_NOT_SHAPE = ("dtype", "attention_impl", "remat", "resid_pdrop", "embd_pdrop", "attn_pdrop", "initializer_range")


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Hugging Face `GPT2Config` field names and defaults (124M), plus how to compute."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None = 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    # Not in Hugging Face's config: how this port computes (never part of the weights' metadata).
    dtype: str = "float32"  # compute dtype; parameters stay float32
    attention_impl: str = "xla"  # "xla" | "cudnn" (GPU, bfloat16/float16; causal attention without padding)
    remat: str = "none"  # "none" | "full" | "dots": what each block keeps for the backward pass
    vocab_pad_multiple: int = 128

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ConfigurationError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation_function not in _ACTIVATIONS:
            raise ConfigurationError(
                f"activation_function {self.activation_function!r} not supported; use one of {list(_ACTIVATIONS)}"
            )
        if self.dtype not in _DTYPES:
            raise ConfigurationError(f"dtype {self.dtype!r} not supported; use one of {list(_DTYPES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigurationError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigurationError(f"remat must be one of {list(REMAT_POLICIES)}, got {self.remat!r}")

    def shape(self) -> dict[str, Any]:
        """The fields that define the function the weights compute: what rebuilds the model from
        them, without how it computes (dtype, attention_impl, remat) or trains (dropout, init)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_SHAPE}

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    @property
    def compute_dtype(self) -> jnp.dtype:
        return _DTYPES[self.dtype]


# The published sizes (Hugging Face model ids); any other size is a set of overrides of "gpt2".
SIZES: dict[str, dict[str, int]] = {
    "gpt2": {},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
}


def make_config(size: str = "gpt2", **overrides: Any) -> GPT2Config:
    """The config of a published size with Hugging Face field overrides; unknown fields refused."""
    known = {f.name for f in dataclasses.fields(GPT2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigurationError(f"unknown GPT-2 config field(s) {unknown}; supported: {', '.join(sorted(known))}")
    return GPT2Config(**{**SIZES[size], **overrides})


class LowRankAdapter(nnx.Module):
    """LoRA: adds `alpha / rank * x @ a @ b` to a projection. `b` starts at zero, so the model is
    unchanged until it trains; `a` starts like PyTorch's default linear init."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float, rngs: nnx.Rngs):
        bound = in_features**-0.5
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.a = nnx.Param(jax.random.uniform(rngs.params(), (in_features, rank), jnp.float32, -bound, bound))
        self.b = nnx.Param(jnp.zeros((rank, out_features), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x @ self.a[...].astype(x.dtype)) @ (self.scale * self.b[...]).astype(x.dtype)

    def weight_delta(self) -> jax.Array:
        """What merging adds to the projection's (in, out) weight."""
        return self.a[...] @ (self.scale * self.b[...])


class Conv1D(nnx.Module):
    """Hugging Face's `Conv1D`: a linear layer whose weight is stored (in, out), optionally with a
    low-rank adapter (`lora`, see megathread_jax/lora.py)."""

    def __init__(self, in_features: int, out_features: int, *, std: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.weight = nnx.Param(std * jax.random.normal(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.lora: LowRankAdapter | None = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = x @ self.weight[...].astype(self.dtype) + self.bias[...].astype(self.dtype)
        return y if self.lora is None else y + self.lora(x)


class Embedding(nnx.Module):
    """`num_embeddings` rows stored in a table padded to a multiple of `pad_multiple` rows (zeros)."""

    def __init__(self, num_embeddings: int, features: int, *, pad_multiple: int = 1, std: float, rngs: nnx.Rngs):
        self.num_embeddings = num_embeddings
        rows = -(-num_embeddings // pad_multiple) * pad_multiple
        table = std * jax.random.normal(rngs.params(), (num_embeddings, features), jnp.float32)
        self.weight = nnx.Param(jnp.pad(table, ((0, rows - num_embeddings), (0, 0))))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0)


def _layer_norm(config: GPT2Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, dtype=jnp.float32, rngs=rngs)


def _normed(norm: nnx.LayerNorm, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    return norm(x.astype(jnp.float32)).astype(dtype)


class GPT2Attention(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        d = config.n_embd
        dtype = config.compute_dtype
        self.n_head = config.n_head
        self.implementation = config.attention_impl
        self.c_attn = Conv1D(d, 3 * d, std=config.initializer_range, dtype=dtype, rngs=rngs)
        # Hugging Face scales the residual projections' init by 1/sqrt(2 * n_layer).
        proj_std = config.initializer_range / (2 * config.n_layer) ** 0.5
        self.c_proj = Conv1D(d, d, std=proj_std, dtype=dtype, rngs=rngs)
        self.attn_dropout = nnx.Dropout(config.attn_pdrop, rngs=rngs)
        self.resid_dropout = nnx.Dropout(config.resid_pdrop, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        cache: dict | None,
        cache_index: jax.Array | None,
        output_attentions: bool,
    ) -> tuple[jax.Array, dict | None, jax.Array | None]:
        b, t, d = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.n_head, d // self.n_head) for a in (q, k, v))
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, cache_index, 0, 0))
            cache = {"k": k, "v": v}
        dropout_active = self.attn_dropout.rate > 0 and not self.attn_dropout.deterministic
        if self.implementation == "cudnn" and mask is None and not (output_attentions or dropout_active):
            # The fused cuDNN kernel serves the plain causal case (training).
            _check_cudnn_attention(q.dtype)
            out = jax.nn.dot_product_attention(
                q, k.astype(q.dtype), v.astype(q.dtype), is_causal=True, implementation="cudnn"
            )
            weights = None
        else:
            out, weights = self._explicit_attention(q, k, v, mask)
        out = self.resid_dropout(self.c_proj(out.reshape(b, t, d)))
        return out, cache, (weights if output_attentions else None)

    def _explicit_attention(self, q, k, v, mask):
        """Softmax attention written out (the `xla` implementation, and for attention weights or
        attention dropout): returns the output and the weights."""
        t, s = q.shape[1], k.shape[1]
        if mask is None:
            mask = jnp.tril(jnp.ones((t, s), bool), k=s - t)[None, None]
        logits = einsum_float32_out("btnh,bsnh->bnts", q, k.astype(q.dtype))
        logits = jnp.where(mask, logits * q.shape[-1] ** -0.5, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bnts,bsnh->btnh", self.attn_dropout(weights).astype(q.dtype), v.astype(q.dtype))
        return out, weights


def _check_cudnn_attention(dtype: jnp.dtype) -> None:
    """The fused kernel runs on NVIDIA GPUs in 16-bit floats; checked when the model runs (not when
    it is built), so weights trained with it load anywhere."""
    if jax.default_backend() != "gpu" or dtype == jnp.float32:
        raise ConfigurationError(
            "attention_impl='cudnn' needs an NVIDIA GPU and dtype bfloat16 or float16 "
            f"(backend {jax.default_backend()}, dtype {jnp.dtype(dtype).name}); use attention_impl='xla'"
        )


class GPT2MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        d = config.n_embd
        inner = config.n_inner or 4 * d
        dtype = config.compute_dtype
        self.c_fc = Conv1D(d, inner, std=config.initializer_range, dtype=dtype, rngs=rngs)
        self.c_proj = Conv1D(
            inner, d, std=config.initializer_range / (2 * config.n_layer) ** 0.5, dtype=dtype, rngs=rngs
        )
        self.act = _ACTIVATIONS[config.activation_function]
        self.dropout = nnx.Dropout(config.resid_pdrop, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        self.dtype = config.compute_dtype
        self.ln_1 = _layer_norm(config, rngs)
        self.attn = GPT2Attention(config, rngs=rngs)
        self.ln_2 = _layer_norm(config, rngs)
        self.mlp = GPT2MLP(config, rngs=rngs)

    def __call__(self, x, mask, cache, cache_index, output_attentions):
        attn_out, cache, weights = self.attn(
            _normed(self.ln_1, x, self.dtype), mask, cache, cache_index, output_attentions
        )
        x = x + attn_out
        x = x + self.mlp(_normed(self.ln_2, x, self.dtype))
        return x, cache, weights


class GPT2Model(nnx.Module):
    """Hugging Face's `GPT2Model` (the `transformer` of `GPT2LMHeadModel`)."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.config = config
        self.wte = Embedding(
            config.vocab_size, config.n_embd, pad_multiple=config.vocab_pad_multiple, std=std, rngs=rngs
        )
        self.wpe = Embedding(config.n_positions, config.n_embd, std=std, rngs=rngs)
        self.drop = nnx.Dropout(config.embd_pdrop, rngs=rngs)
        self.h = nnx.List([GPT2Block(config, rngs=rngs) for _ in range(config.n_layer)])
        self.ln_f = _layer_norm(config, rngs)

    def __call__(self, input_ids, position_ids, mask, caches, cache_index, output_attentions):
        dtype = self.config.compute_dtype
        x = self.drop((self.wte(input_ids) + self.wpe(position_ids)).astype(dtype))
        policy = REMAT_POLICIES[self.config.remat]

        def run_block(block, x, mask, cache, cache_index):
            return block(x, mask, cache, cache_index, output_attentions)

        if self.config.remat != "none" and caches is None:
            run_block = nnx.remat(run_block, policy=policy)
        new_caches, attentions = [], []
        for i, block in enumerate(self.h):
            x, cache, weights = run_block(block, x, mask, None if caches is None else caches[i], cache_index)
            new_caches.append(cache)
            attentions.append(weights)
        return _normed(self.ln_f, x, jnp.float32), (new_caches if caches is not None else None), attentions


class GPT2LMHeadModel(nnx.Module):
    """GPT-2 language model; `lm_head` is tied to `transformer.wte` (no separate parameter)."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        self.config = config
        self.transformer = GPT2Model(config, rngs=rngs)

    def shape_kwargs(self) -> dict[str, Any]:
        """The `models.create` overrides that rebuild a model of this shape."""
        return self.config.shape()

    def _logits(self, hidden: jax.Array) -> jax.Array:
        dtype = self.config.compute_dtype
        table = self.transformer.wte.weight[...].astype(dtype)
        logits = einsum_float32_out("btd,vd->btv", hidden.astype(dtype), table)
        return logits[..., : self.config.vocab_size]

    def _token_ids(self, input_ids: jax.typing.ArrayLike) -> jax.Array:
        """`input_ids` as a JAX array, checked: integer ids (B, T), T within the model's positions."""
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(
                f"GPT-2 expects integer token ids of shape (batch, length), got {input_ids.dtype} {input_ids.shape}"
            )
        if input_ids.shape[1] > self.config.n_positions:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed the model's {self.config.n_positions} positions")
        return input_ids

    def _attention_mask(self, attention_mask: jax.typing.ArrayLike | None, t: int) -> jax.Array | None:
        if attention_mask is None:
            return None  # causal only: the fused kernels' fast path
        causal = jnp.tril(jnp.ones((t, t), bool))
        return causal[None, None] & jnp.asarray(attention_mask, bool)[:, None, None, :]

    def __call__(
        self,
        input_ids: jax.typing.ArrayLike,
        attention_mask: jax.typing.ArrayLike | None = None,
        position_ids: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        """Logits (B, T, vocab_size), float32, of token ids (JAX or NumPy arrays). Like Hugging
        Face, positions default to 0..T-1 even with left padding; `attention_mask` (B, T) marks real
        tokens with 1."""
        input_ids = self._token_ids(input_ids)
        t = input_ids.shape[1]
        position_ids = jnp.arange(t)[None] if position_ids is None else jnp.asarray(position_ids)
        hidden, _, _ = self.transformer(
            input_ids, position_ids, self._attention_mask(attention_mask, t), None, None, False
        )
        return self._logits(hidden)

    def attention_weights(
        self, input_ids: jax.typing.ArrayLike, attention_mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        """Softmax attention weights of every layer and head, (n_layer, B, n_head, T, T), float32."""
        input_ids = self._token_ids(input_ids)
        t = input_ids.shape[1]
        position_ids = jnp.arange(t)[None]
        _, _, weights = self.transformer(
            input_ids, position_ids, self._attention_mask(attention_mask, t), None, None, True
        )
        return jnp.stack(weights)

    def init_cache(self, batch_size: int, length: int) -> list[dict[str, jax.Array]]:
        """An empty key/value cache of `length` slots per layer."""
        c = self.config
        shape = (batch_size, length, c.n_head, c.n_embd // c.n_head)
        return [
            {"k": jnp.zeros(shape, c.compute_dtype), "v": jnp.zeros(shape, c.compute_dtype)} for _ in range(c.n_layer)
        ]

    def decode(
        self,
        input_ids: jax.Array,
        position_ids: jax.Array,
        slot_mask: jax.Array,
        cache: list[dict[str, jax.Array]],
        cache_index: jax.Array,
    ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """Runs tokens (B, T) written to cache slots cache_index..cache_index+T-1.

        Each token attends to the earlier and its own slots where `slot_mask` (B, S) is 1. Returns
        the logits (B, T, vocab_size) and the updated cache.
        """
        t, s = input_ids.shape[1], slot_mask.shape[1]
        query_slots = cache_index + jnp.arange(t)
        causal = jnp.arange(s)[None, :] <= query_slots[:, None]  # (T, S)
        mask = causal[None, None] & slot_mask.astype(bool)[:, None, None, :]
        hidden, cache, _ = self.transformer(input_ids, position_ids, mask, cache, cache_index, False)
        return self._logits(hidden), cache
