"""Only a user's mistake becomes a one-line message; a bug in the package keeps its traceback."""

import signal

import pytest

from megathread_jax import convert, models
from megathread_jax.errors import ConfigurationError, StoppedBySignal, UserError, exit_code_of


def _raise(error: Exception):
    def command():
        raise error

    return command


def test_a_usage_error_is_one_line_and_exit_code_2(capsys):
    assert exit_code_of(_raise(ConfigurationError("top_k must be in [1, 50], got 0"))) == 2
    assert capsys.readouterr().err == "error: top_k must be in [1, 50], got 0\n"


def test_a_failure_exits_1_and_a_stop_by_signal_128_plus_its_number(capsys):
    assert exit_code_of(_raise(UserError("the disk is full"))) == 1
    assert exit_code_of(_raise(StoppedBySignal("stopped by SIGTERM", signal.SIGTERM))) == 143
    assert exit_code_of(_raise(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.splitlines() == [
        "error: the disk is full",
        "error: stopped by SIGTERM",
        "",
        "error: interrupted (Ctrl-C)",
    ]


@pytest.mark.parametrize("bug", [ValueError("shapes"), RuntimeError("internal"), ImportError("module"), KeyError("k")])
def test_any_other_exception_keeps_its_traceback(bug):
    with pytest.raises(type(bug)):
        exit_code_of(_raise(bug))


def test_a_bad_value_is_both_a_user_error_and_a_value_error():
    """Library callers can catch the built-in type; the command-line tools print one line."""
    with pytest.raises(ConfigurationError) as info:
        models.create("gpt2", n_embd=100, n_head=3)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)
    with pytest.raises(UserError, match="no converter for model"):
        convert.sources("resnet50")


def test_a_missing_weight_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        convert.read_weight_file(tmp_path / "missing.pth")
