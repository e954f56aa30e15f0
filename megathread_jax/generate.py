"""GPT-2 text generation with a preallocated key/value cache, compiled once per (batch, cache length).

Prompts of different lengths are left-padded (attention mask 0 on padding) as Hugging Face does;
positions count real tokens only. The whole loop (prefill, then one token per iteration) runs in
one `jax.jit`; the prompt length and the number of new tokens are traced values, and the cache
length is rounded up to a power of two, so new prompts rarely compile anything.

Beam search (`num_beams` > 1, with `length_penalty` and `early_stopping`), `repetition_penalty` and
`no_repeat_ngram_size` follow Hugging Face's `generate` step for step.

CLI (streams tokens as they come; beam search prints its best beam at the end):
  python -m megathread_jax.generate --model gpt2 --prompt "The cat sat on the mat" --max-new-tokens 40
  python -m megathread_jax.generate --checkpoint WORKDIR_OR_WEIGHTS_DIR --prompt "..." --do-sample --top-p 0.9
  python -m megathread_jax.generate --model gpt2 --prompt "The cat sat on the mat" --attention-png cat.png
  python -m megathread_jax.generate --model gpt2 --prompt "The cat" --num-beams 4 --no-repeat-ngram-size 2
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from megathread_jax import beam_search, logits_processors
from megathread_jax.errors import ConfigurationError, exit_code_of
from megathread_jax.models import gpt2

MIN_CACHE_LENGTH = 16


def filter_logits(
    logits: jax.Array, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> jax.Array:
    """Logits after temperature, top-k and top-p (nucleus) filtering, in Hugging Face's order;
    removed tokens get -inf. The nucleus is the smallest set of most likely tokens whose
    probabilities reach `top_p`."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p is not None:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = mass_before < top_p
        smallest_kept = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < smallest_kept, -jnp.inf, logits)
    return logits


def cache_length(prompt_length: int, max_new_tokens: int, n_positions: int) -> int:
    """The cache bucket: the next power of two (at least 16) holding prompt and new tokens."""
    needed = prompt_length + max_new_tokens
    if needed > n_positions:
        raise ConfigurationError(
            f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{n_positions} positions"
        )
    return min(max(MIN_CACHE_LENGTH, 1 << (needed - 1).bit_length()), n_positions)


# The streaming callback of the running `generate` call. The compiled loop calls a fixed function
# (`_emit`), so a new callback never causes a compilation.
_stream_sink: list[Callable[[np.ndarray], None]] = []


def _emit(tokens: np.ndarray) -> None:
    if _stream_sink:
        _stream_sink[-1](np.asarray(tokens))


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "do_sample",
        "top_k",
        "use_top_p",
        "use_repetition_penalty",
        "no_repeat_ngram_size",
        "stream",
    ),
)
def _generate_loop(
    graphdef,
    state,
    tokens,
    slot_mask,
    prompt_length,
    max_new_tokens,
    key,
    temperature,
    top_p,
    eos_token_id,
    pad_token_id,
    repetition_penalty,
    *,
    do_sample,
    top_k,
    use_top_p,
    use_repetition_penalty,
    no_repeat_ngram_size,
    stream,
):
    model = nnx.merge(graphdef, state)
    model.eval()
    batch, slots = tokens.shape
    n_positions = model.config.n_positions
    positions = jnp.clip(jnp.cumsum(slot_mask, axis=-1) - 1, 0, n_positions - 1)
    # Prefill every slot at once; slots after the prompt hold padding and are causally invisible to
    # the prompt. Their cache entries are overwritten before any real token attends to them.
    logits, cache = model.decode(tokens, positions, slot_mask, model.init_cache(batch, slots), jnp.int32(0))
    next_logits = jax.lax.dynamic_index_in_dim(logits, prompt_length - 1, axis=1, keepdims=False)

    def choose(logits, i):
        if not do_sample:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p if use_top_p else None)
        return jax.random.categorical(jax.random.fold_in(key, i), filtered).astype(jnp.int32)

    def keep_going(carry):
        i, _, _, _, finished = carry
        return (i < max_new_tokens) & ~jnp.all(finished)

    def step(carry):
        i, tokens, cache, next_logits, finished = carry
        slot = prompt_length + i
        next_logits = logits_processors.adjust_logits(
            next_logits, tokens, slot_mask, slot, repetition_penalty, use_repetition_penalty, no_repeat_ngram_size
        )
        token = jnp.where(finished, pad_token_id, choose(next_logits, i))
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, slot))
        if stream:
            io_callback(_emit, None, token, ordered=True)
        finished = finished | (token == eos_token_id)
        position = jax.lax.dynamic_slice_in_dim(positions, slot, 1, axis=1)
        logits, cache = model.decode(token[:, None], position, slot_mask, cache, slot)
        return i + 1, tokens, cache, logits[:, 0], finished

    carry = (jnp.int32(0), tokens, cache, next_logits, jnp.zeros((batch,), bool))
    _, tokens, _, _, _ = jax.lax.while_loop(keep_going, step, carry)
    return tokens


def check_arguments(
    config: gpt2.GPT2Config,
    prompt_length: int,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> None:
    """Refuses decoding settings the model cannot honour, naming the value and its range."""
    if not repetition_penalty > 0:
        raise ConfigurationError(f"repetition_penalty must be > 0 (1 = none), got {repetition_penalty}")
    if no_repeat_ngram_size < 0:
        raise ConfigurationError(f"no_repeat_ngram_size must be >= 0 (0 = none), got {no_repeat_ngram_size}")
    if max_new_tokens < 1:
        raise ConfigurationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    cache_length(prompt_length, max_new_tokens, config.n_positions)
    if do_sample and temperature <= 0:
        raise ConfigurationError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and not 1 <= top_k <= config.vocab_size:
        raise ConfigurationError(f"top_k must be in [1, {config.vocab_size}], got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigurationError(f"top_p must be in (0, 1], got {top_p}")


def generate(
    model: nnx.Module,
    input_ids: np.ndarray,
    *,
    attention_mask: np.ndarray | None = None,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    seed: int = 0,
    on_token: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """Token ids (B, T + max_new_tokens): the prompts followed by the new tokens, `pad_token_id`
    after a row's EOS (like Hugging Face's `generate`, but always of full length).

    `input_ids` (B, T) are left-padded where prompts differ in length, with `attention_mask` 0 on
    the padding. Greedy unless `do_sample`; sampling applies temperature, then top-k, then top-p.
    Before either, `repetition_penalty` (> 1 discourages every token already in the row) and
    `no_repeat_ngram_size` (n > 0: no n-gram twice in a row) adjust the logits as in Hugging Face.
    `num_beams` > 1 is Hugging Face's beam search instead (greedy only), returning each prompt's best
    hypothesis: finished hypotheses are scored by their log-probability over their new length to the
    power `length_penalty`; `early_stopping` True stops once `num_beams` are finished, False when no
    running beam can likely do better, "never" when none can.
    `on_token`, if given, receives each step's new tokens (B,) as they are made.
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ConfigurationError(f"input_ids must be (batch, length) with length >= 1, got shape {input_ids.shape}")
    batch, prompt_length = input_ids.shape
    check_arguments(
        model.config,
        prompt_length,
        max_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        no_repeat_ngram_size,
    )
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != input_ids.shape:
        raise ConfigurationError(f"attention_mask shape {mask.shape} differs from input_ids shape {input_ids.shape}")
    if not mask[:, -1].all():
        raise ConfigurationError("prompts must be left-padded: the last column of attention_mask must be all 1")
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else 0
    _check_beam_arguments(num_beams, do_sample, early_stopping, on_token)
    slots = cache_length(prompt_length, max_new_tokens, model.config.n_positions)
    tokens = np.full((batch, slots), pad_token_id, np.int32)
    tokens[:, :prompt_length] = input_ids
    slot_mask = np.ones((batch, slots), np.int32)
    slot_mask[:, :prompt_length] = mask

    graphdef, state = nnx.split(model)
    if num_beams > 1:
        # n ** length_penalty as Python computes it (double precision), for every new length n.
        divisors = [1.0] + [float(n) ** length_penalty for n in range(1, slots + 1)]
        out = beam_search.beam_search_loop(
            graphdef,
            state,
            jnp.asarray(tokens),
            jnp.asarray(slot_mask),
            jnp.int32(prompt_length),
            jnp.int32(max_new_tokens),
            jnp.asarray(divisors, jnp.float32),
            jnp.float32(length_penalty),
            jnp.int32(-1 if eos_token_id is None else eos_token_id),
            jnp.float32(repetition_penalty),
            num_beams=num_beams,
            early_stopping=early_stopping,
            use_repetition_penalty=repetition_penalty != 1.0,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        return np.asarray(out)[:, : prompt_length + max_new_tokens]
    if on_token is not None:
        _stream_sink.append(on_token)
    try:
        out = _generate_loop(
            graphdef,
            state,
            jnp.asarray(tokens),
            jnp.asarray(slot_mask),
            jnp.int32(prompt_length),
            jnp.int32(max_new_tokens),
            jax.random.key(seed),
            jnp.float32(temperature),
            jnp.float32(1.0 if top_p is None else top_p),
            jnp.int32(-1 if eos_token_id is None else eos_token_id),
            jnp.int32(pad_token_id),
            jnp.float32(repetition_penalty),
            do_sample=do_sample,
            top_k=top_k if do_sample else None,
            use_top_p=do_sample and top_p is not None,
            use_repetition_penalty=repetition_penalty != 1.0,
            no_repeat_ngram_size=no_repeat_ngram_size,
            stream=on_token is not None,
        )
        out = np.asarray(out)  # waits for the loop, and so for every streamed token
    finally:
        if on_token is not None:
            _stream_sink.pop()
    return out[:, : prompt_length + max_new_tokens]


def _check_beam_arguments(
    num_beams: int, do_sample: bool, early_stopping: bool | str, on_token: Callable | None
) -> None:
    if num_beams < 1:
        raise ConfigurationError(f"num_beams must be >= 1 (1 = no beam search), got {num_beams}")
    if num_beams == 1:
        return
    if do_sample:
        raise ConfigurationError("beam search (num_beams > 1) decodes greedily here: leave out do_sample")
    if early_stopping not in (True, False, "never"):
        raise ConfigurationError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if on_token is not None:
        raise ConfigurationError("beam search cannot stream tokens: a beam's text is known only at the end")


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) for token lists of different lengths, padded on the left."""
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_token_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _weights_directory(args) -> pathlib.Path:
    from megathread_jax import checkpoints

    if args.checkpoint:
        directory = checkpoints.weights_directory(args.checkpoint)
        held = checkpoints.read_meta(directory).get("model")
        if held not in gpt2.SIZES:
            raise ConfigurationError(
                f"{args.checkpoint} holds {held!r} weights, an image model: generate needs a GPT-2 checkpoint "
                f"(classify images with it: python -m megathread_jax.predict --checkpoint {args.checkpoint} IMAGE...)"
            )
        return directory
    return checkpoints.pretrained_dir(
        args.model, "hf", then="Then generate from it: python -m megathread_jax.generate --checkpoint DIR --prompt ..."
    )


class _Printer:
    """Prints the text of a growing token list as it grows (whole characters only)."""

    def __init__(self, tokenizer, eos_token_id: int):
        self.tokenizer, self.eos_token_id = tokenizer, eos_token_id
        self.ids: list[int] = []
        self.printed = ""

    def __call__(self, tokens: np.ndarray) -> None:
        token = int(tokens[0])
        if token == self.eos_token_id or (self.ids and self.ids[-1] == self.eos_token_id):
            self.ids.append(self.eos_token_id)
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.printed) and not text.endswith("\ufffd"):
            print(text[len(self.printed) :], end="", flush=True)
            self.printed = text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megathread_jax.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        default="gpt2",
        choices=sorted(gpt2.SIZES),
        help="Hugging Face's published weights (downloaded and converted once)",
    )
    source.add_argument("--checkpoint", help="a training workdir or a directory written by the converter")
    parser.add_argument(
        "--adapter", help="a LoRA run's adapter (WORKDIR/adapter), put onto the weights of --model or --checkpoint"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already in the text"
    )
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0, help="n > 0: never repeat an n-gram")
    parser.add_argument("--num-beams", type=int, default=1, help="> 1: beam search (printed when it ends)")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam search: > 0 favours longer text")
    parser.add_argument(
        "--early-stopping", choices=("false", "true", "never"), default="false", help="beam search: when to stop"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--attention-png", help="also save the prompt's attention heatmaps to this PNG")
    parser.add_argument("--attention-layer", type=int, default=-1, help="which layer to draw (default: the last)")
    args = parser.parse_args(argv)
    return exit_code_of(lambda: _run_cli(args))


def _run_cli(args: argparse.Namespace) -> None:
    from megathread_jax import attention_maps, checkpoints, lora
    from megathread_jax.data import text

    directory = _weights_directory(args)
    model, meta = checkpoints.model_from_weights(directory, dtype=args.dtype, attention_impl="xla")
    if args.adapter:
        lora.load_adapter(model, meta["model"], args.adapter)
        lora.merge(model)
    tokenizer = text.get_tokenizer(meta.get("tokenizer", "gpt2"))
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise ConfigurationError("the prompt is empty")
    check_arguments(  # before any output, so an error never follows the echoed prompt on its line
        model.config,
        len(prompt),
        args.max_new_tokens,
        args.do_sample,
        args.temperature,
        args.top_k,
        args.top_p,
        args.repetition_penalty,
        args.no_repeat_ngram_size,
    )
    if args.attention_png:
        weights = attention_maps.attention_maps(model, np.asarray([prompt]))[args.attention_layer, 0]
        layer = args.attention_layer % model.config.n_layer
        labels = [tokenizer.decode([t]) for t in prompt]
        path = attention_maps.plot_attention(
            weights, labels, args.attention_png, title=f"{meta['model']} layer {layer}: {args.prompt!r}"
        )
        print(f"attention heatmaps: {path}", file=sys.stderr)
    early_stopping = {"false": False, "true": True, "never": "never"}[args.early_stopping]
    _check_beam_arguments(args.num_beams, args.do_sample, early_stopping, None)
    print(args.prompt, end="", flush=True)
    printer = _Printer(tokenizer, tokenizer.eos_token_id)
    tokens = generate(
        model,
        np.asarray([prompt]),
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        early_stopping=early_stopping,
        eos_token_id=tokenizer.eos_token_id,
        seed=args.seed,
        on_token=printer if args.num_beams == 1 else None,
    )
    if args.num_beams > 1:  # a beam's text is known only at the end
        for token in tokens[0, len(prompt) :]:
            printer(np.asarray([token]))
    print()


if __name__ == "__main__":
    sys.exit(main())
