"""Text corpora: tokenising, caching, packed training windows and sliding evaluation windows."""

import ml_collections
import numpy as np
import pytest

from megathread_jax.data import text
from megathread_jax.errors import DataNotFoundError, UserError


def _config(tmp_path, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        dict(
            name="pydoc",
            path="",
            hf_dataset="",
            hf_config="",
            train_split="train",
            val_split="validation",
            val_fraction=0.1,
            tokenizer="bytes",
            cache_dir=str(tmp_path / "cache"),
            seq_len=16,
            eval_stride=0,
            max_train_tokens=0,
        )
    )
    c.update(overrides)
    return c


def test_byte_tokenizer_round_trips_unicode():
    tok = text.ByteTokenizer()
    ids = tok.encode("Grüße, 世界")
    assert max(ids) < 256 and tok.decode(ids + [tok.eos_token_id]) == "Grüße, 世界"


def test_text_file_is_split_tokenised_and_cached(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    dataset = text.load(_config(tmp_path, name="text_file", path=str(path)))
    assert dataset.train_tokens.dtype == np.uint16
    assert text.ByteTokenizer().decode(dataset.train_tokens.tolist()) == ("abcdefghij" * 9)
    assert dataset.val_tokens.tolist() == [*b"abcdefghij", 256]
    assert not dataset.is_builtin_demo
    cached = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 2
    path.write_text("another text " * 10, encoding="utf-8")  # a changed file is tokenised again
    assert text.load(_config(tmp_path, name="text_file", path=str(path))).train_tokens[0] == ord("a")
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4


def test_builtin_corpus_needs_no_files(tmp_path):
    dataset = text.load(_config(tmp_path, max_train_tokens=1000))
    assert dataset.is_builtin_demo and len(dataset.train_tokens) == 1000 and len(dataset.val_tokens) > 1000


def test_missing_text_file_says_what_to_do(tmp_path):
    with pytest.raises(DataNotFoundError, match="data.path"):
        text.load(_config(tmp_path, name="text_file", path=str(tmp_path / "missing.txt")))
    with pytest.raises(UserError, match="unknown text corpus"):
        text.load(_config(tmp_path, name="books"))


def test_packed_training_windows_hold_inputs_and_next_token_targets():
    tokens = np.arange(50, dtype=np.uint16)
    assert text.num_train_windows(tokens, 8) == 6
    windows = text.train_window(tokens, np.array([0, 5]), 8)
    assert windows.shape == (2, 9) and windows.dtype == np.int32
    assert windows[1].tolist() == list(range(40, 49))


@pytest.mark.parametrize("stride", [16, 8, 3, 1])
def test_sliding_windows_score_every_token_but_the_first_exactly_once(stride):
    tokens = np.random.default_rng(0).integers(1, 200, 101).astype(np.uint16)
    batches = list(text.eval_batches(tokens, length=16, stride=stride, batch_size=4))
    masks = np.concatenate([b["mask"] for b in batches])
    windows = np.concatenate([b["tokens"] for b in batches])
    assert masks[:, 0].sum() == 0  # the first token of a window is context only
    assert masks.sum() == len(tokens) - 1
    scored = sorted(zip(*np.nonzero(masks), strict=True))
    assert sum(int(windows[r, c]) for r, c in scored) == int(tokens[1:].astype(np.int64).sum())
    windows = text.sliding_windows(len(tokens), 16, stride)
    assert all(end - start <= 17 for start, end, _ in windows)
    # after the first window, each scored token has at least 16 - stride earlier tokens of context
    assert all(first_target - start == 17 - stride for start, _, first_target in windows[1:])


def test_stride_longer_than_the_window_is_refused():
    with pytest.raises(UserError, match="stride"):
        text.sliding_windows(100, 16, 17)
