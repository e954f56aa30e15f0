"""The memory planner (`python -m benchmarks.memory`): its table, and bytes per device that follow
from the shapes and the layout rule (the compiled step's temporaries are XLA's own)."""

import json
import os
import subprocess
import sys

from flax import nnx

from megathread_jax import lora, models
from tests.test_main import ROOT

SEQ_LEN = 64


def _parameter_bytes(rank: int = 0) -> int:
    model = models.create("gpt2", n_positions=SEQ_LEN)
    if rank:
        lora.add_adapters(model, rank=rank, alpha=16.0, targets="", seed=0)
        return sum(x.nbytes for x in nnx.to_flat_state(lora.adapter_state(model)).leaves)
    return sum(x.nbytes for x in nnx.to_flat_state(nnx.state(model, nnx.Param)).leaves)


def test_plan_of_data_parallel_fsdp_and_lora(tmp_path):
    out = tmp_path / "memory.json"
    args = ["--sizes", "gpt2", "--devices", "2", "--seq-len", str(SEQ_LEN), "--remat", "none", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *args],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data_parallel, fsdp, low_rank = json.loads(out.read_text())
    assert [p["setup"] for p in (data_parallel, fsdp, low_rank)] == ["data parallel", "fsdp=2", "LoRA r=16"]
    for column in ("params GiB", "AdamW GiB", "temporaries GiB", "fits", "data parallel on 2", "LoRA r=16 on 1"):
        assert column in result.stdout

    full = _parameter_bytes()
    assert data_parallel["params"] == full and data_parallel["optimizer"] >= 2 * full  # AdamW's two moments
    # fsdp=2 halves every array of at least parallel.MIN_SHARDED_SIZE elements: most of the bytes.
    assert full / 2 <= fsdp["params"] < 0.51 * full and fsdp["optimizer"] < 0.51 * data_parallel["optimizer"]
    # LoRA: the base weights plus the adapters, and AdamW's moments of the adapters only.
    adapters = _parameter_bytes(rank=16)
    assert low_rank["params"] == full + adapters
    assert 2 * adapters <= low_rank["optimizer"] < 2 * adapters + 1024
    for plan in (data_parallel, fsdp, low_rank):
        assert plan["temporaries"] > 0
        assert plan["total"] == plan["params"] + plan["optimizer"] + plan["temporaries"] + plan["batch"]
