"""LoRA on GPT-2: adapters leave the model unchanged until they train, only they train, a resumed run
is exact, and the merged final weights are a plain GPT-2 (Hugging Face loads them; `generate` gives
the same text from them as from the base weights with the adapter put on)."""

import shutil

import jax
import numpy as np
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from megathread_jax import checkpoints, config_base, lora, models, tasks, train
from megathread_jax.convert.__main__ import main as convert_main
from tests.conftest import flat_weights
from tests.test_command_line import refused
from tests.test_main import run_module

RANK = 4
OVERRIDES = {
    "model.n_layer": 2,
    "num_epochs": 2,
    "data.max_train_tokens": 8300,
    "batch_size": 16,
    "eval_batch_size": 16,
    "log_every_steps": 1,
    "checkpoint_every_steps": 0,
    "sample_tokens": 0,
    "compilation_cache_dir": "",
    "optim.learning_rate": 0.01,
    "lora.rank": RANK,
    "lora.alpha": 8.0,
}


def _small_gpt2() -> models.gpt2.GPT2LMHeadModel:
    model = models.create("gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=32, seed=3)
    model.eval()
    return model


def test_adapters_start_as_no_change_and_merge_into_the_same_function():
    model = _small_gpt2()
    ids = np.arange(12)[None]
    before = np.asarray(model(ids))
    paths = lora.add_adapters(model, rank=RANK, alpha=8.0, targets="transformer.h.1.attn", seed=0)
    assert paths == ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    np.testing.assert_array_equal(np.asarray(model(ids)), before)

    for module in lora.adapted(model).values():  # as if trained
        module.lora.b.set_value(np.random.default_rng(0).normal(0, 0.1, module.lora.b.get_value().shape))
    adapted = np.asarray(model(ids))
    assert np.abs(adapted - before).max() > 0.1
    assert lora.merge(model) == 2 and not lora.adapted(model)
    np.testing.assert_allclose(np.asarray(model(ids)), adapted, atol=1e-5, rtol=0)


def _lora_run(tmp_path):
    """A base GPT-2 saved as weights, and a LoRA run from it (2 epochs of 4 steps)."""
    base_config = config_base.load_config("configs/gpt2.py:demo", {**OVERRIDES, "lora.rank": 0})
    base = train.build_model(base_config, tasks.create(base_config).model_kwargs)
    checkpoints.save_weights(tmp_path / "base", base, checkpoints.weights_meta("gpt2", base, tokenizer="bytes"))
    config = config_base.load_config("configs/gpt2.py:demo", {**OVERRIDES, "init_from": str(tmp_path / "base")})
    train.train_and_evaluate(config, tmp_path / "run")
    return config


def test_a_lora_run_trains_only_the_adapters_resumes_exactly_and_ends_as_a_plain_gpt2(tmp_path):
    config = _lora_run(tmp_path)
    run = tmp_path / "run"

    # Only the adapters trained: each adapted weight moved by exactly its adapter's low-rank
    # product, every other array is bit-identical to the base.
    base, merged = flat_weights(tmp_path / "base"), flat_weights(run / "weights")
    meta, arrays = checkpoints.read_weights(run / lora.ADAPTER_DIR, meta_file=lora.ADAPTER_META)
    assert meta["rank"] == RANK and len(meta["projections"]) == 8  # 4 projections x 2 blocks
    adapter = {jax.tree_util.keystr(k): np.asarray(x) for k, x in jax.tree_util.tree_flatten_with_path(arrays)[0]}
    deltas = {
        key.replace("['lora']['a']", "['weight']"): a @ (adapter[key.replace("['a']", "['b']")] * 8.0 / RANK)
        for key, a in adapter.items()
        if key.endswith("['a']")
    }
    assert len(deltas) == 8 and set(merged) == set(base)
    for key, value in merged.items():
        if key not in deltas:
            np.testing.assert_array_equal(value, base[key], err_msg=key)
            continue
        moved = value - base[key]
        assert np.linalg.matrix_rank(moved, tol=1e-6) == RANK, key
        np.testing.assert_allclose(moved, deltas[key], atol=1e-6, rtol=0, err_msg=key)

    # A run resumed after its first epoch ends bit-identical.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for later in ("checkpoints/8", "best/8", "weights", lora.ADAPTER_DIR):
        shutil.rmtree(resumed / later, ignore_errors=True)
    train.train_and_evaluate(config, resumed)
    for name in ("weights", lora.ADAPTER_DIR):
        meta_file = lora.ADAPTER_META if name == lora.ADAPTER_DIR else checkpoints.WEIGHTS_META
        first, again = (checkpoints.read_weights(d / name, meta_file=meta_file)[1] for d in (run, resumed))
        for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # The adapter saved alone, put onto its base, computes what the merged weights compute.
    merged_model, weights_meta = checkpoints.model_from_weights(run / "weights")
    base_model, _ = checkpoints.model_from_weights(tmp_path / "base")
    lora.load_adapter(base_model, "gpt2", run / lora.ADAPTER_DIR)
    ids = np.arange(40)[None] % 250
    expected = np.asarray(merged_model(ids))
    np.testing.assert_allclose(np.asarray(base_model(ids)), expected, atol=1e-5, rtol=0)

    # The merged weights convert to Hugging Face like any GPT-2.
    out = tmp_path / "hf.safetensors"
    assert (
        convert_main(["--model", "gpt2", "--target", "hf", "--from-flax", str(run / "weights"), "--out", str(out)]) == 0
    )
    shape = weights_meta["model_kwargs"]
    reference = GPT2LMHeadModel(
        GPT2Config(**{k: shape[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")})
    )
    missing, unexpected = reference.load_state_dict(load_file(str(out)), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    reference.tie_weights()
    with torch.no_grad():
        hf_logits = reference.eval()(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(hf_logits, expected, atol=1e-4, rtol=0)

    # generate: the base weights with the adapter give the merged weights' text.
    prompt = ["--prompt", "The for", "--max-new-tokens", "16"]
    from_merged = run_module("megathread_jax.generate", "--checkpoint", str(run), *prompt)
    from_adapter = _generate_with_adapter(tmp_path / "base", run / lora.ADAPTER_DIR, prompt)
    assert from_merged.returncode == 0 and from_adapter.returncode == 0, from_adapter.stderr[-2000:]
    assert from_adapter.stdout == from_merged.stdout and len(from_merged.stdout) > len("The for\n")

    # An adapter refused by a base of another shape, in one line.
    other = _small_gpt2()
    checkpoints.save_weights(tmp_path / "other", other, checkpoints.weights_meta("gpt2", other, tokenizer="bytes"))
    result = _generate_with_adapter(tmp_path / "other", run / lora.ADAPTER_DIR, prompt)
    refused(result, 1, "the adapter in", "load it onto the weights it was trained from")


def _generate_with_adapter(base, adapter, prompt: list[str]):
    return run_module("megathread_jax.generate", "--checkpoint", str(base), "--adapter", str(adapter), *prompt)
