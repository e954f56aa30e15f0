"""JAX's persistent compilation cache serves every step: a second run compiles no train or eval step."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Runs the training CLI and reports, per jitted function, how many programs were compiled and how
# many came from the persistent cache (read through jax.monitoring's public listeners).
COUNTING_MAIN = """
import atexit, collections, json, sys
import jax
from jax._src import dispatch
from megathread_jax import main

counts = collections.defaultdict(lambda: {"compiled": 0, "from_cache": 0})
cache_hit = [False]

def on_event(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        cache_hit[0] = True

def on_duration(event, duration, **kwargs):
    if event == dispatch.BACKEND_COMPILE_EVENT:  # one per program, compiled or read from the cache
        counts[kwargs["fun_name"]]["from_cache" if cache_hit[0] else "compiled"] += 1
        cache_hit[0] = False

jax.monitoring.register_event_listener(on_event)
jax.monitoring.register_event_duration_secs_listener(on_duration)
atexit.register(lambda: print("COMPILATIONS " + json.dumps(counts)))
sys.exit(main.main(["main", *sys.argv[1:]]))
"""


def _run(workdir: pathlib.Path, cache: pathlib.Path) -> tuple[dict, str]:
    command = [
        sys.executable,
        "-c",
        COUNTING_MAIN,
        "--config=configs/mobilevit.py:demo",
        f"--workdir={workdir}",
        f"--config.compilation_cache_dir={cache}",
        "--config.num_epochs=1",
        "--config.data.train_size=64",
        "--config.data.val_size=32",
        "--config.batch_size=32",
        "--config.eval_batch_size=32",
    ]
    # JAX writes only programs that took at least a second to compile; at 0 the test checks that
    # the steps can be cached at all, whatever this machine's speed (the demo's steps take longer).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("COMPILATIONS "))
    return json.loads(line.removeprefix("COMPILATIONS ")), result.stderr


def test_a_second_run_compiles_no_train_or_eval_step(tmp_path):
    cache = tmp_path / "xla"
    first, first_stderr = _run(tmp_path / "first", cache)
    assert first["jit(train_step)"] == {"compiled": 1, "from_cache": 0}
    assert first["jit(eval_step)"] == {"compiled": 1, "from_cache": 0}
    assert "Warning" not in first_stderr and "warning" not in first_stderr, first_stderr[-2000:]

    second, second_stderr = _run(tmp_path / "second", cache)  # a new run, not a resume
    assert second["jit(train_step)"] == {"compiled": 0, "from_cache": 1}
    assert second["jit(eval_step)"] == {"compiled": 0, "from_cache": 1}
    assert "Warning" not in second_stderr and "warning" not in second_stderr, second_stderr[-2000:]
