import os
import pathlib
import platform
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megathread_jax import host_memory

GLIBC = platform.libc_ver()[0] == "glibc"


def test_thp_mode_read_from_the_kernel_file(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert host_memory.transparent_huge_page_mode(str(mode_file)) == "madvise"
    assert host_memory.transparent_huge_page_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not GLIBC, reason="the tunable is glibc's")
def test_tunable_added_only_where_it_changes_something():
    env = host_memory.environment_with_huge_pages({"PATH": "/bin"}, "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    kept = host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise") is None
    assert host_memory.environment_with_huge_pages({}, "always") is None
    assert host_memory.environment_with_huge_pages({}, "never") is None
    assert host_memory.environment_with_huge_pages({}, None) is None


def test_entry_point_restarts_itself_once_with_the_tunable(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    script = (
        "import os; from megathread_jax import host_memory; "
        "host_memory.reexec_with_huge_pages(); print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    # One line: the restarted process does not restart again.
    expected = "glibc.malloc.hugetlb=1" if GLIBC and host_memory.transparent_huge_page_mode() == "madvise" else ""
    assert out.splitlines() == [f"tunables={expected}"]


def _run_python(script: str, *args: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, env={**environ, **env}).stdout


MALLOC_CYCLES = """
import ctypes, resource, sys
from megathread_jax import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = host_memory.STEP_HEAP_BYTES
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[1:]))
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_malloc_keeps_a_freed_step_buffer_for_the_next_step():
    # Each cycle allocates, writes and frees one buffer of the largest size XLA:CPU's steps allocate.
    default = int(_run_python(MALLOC_CYCLES, "default"))
    kept = int(_run_python(MALLOC_CYCLES, "keep"))
    assert default >= (host_memory.STEP_HEAP_BYTES >> 21), "glibc mapped the buffer afresh each cycle"
    assert kept < 64, f"{kept} page faults re-using a freed buffer"


TEMP_ALLOCATIONS = """
import jax, jax.numpy as jnp
from megathread_jax import host_memory

def temporaries(x):  # three 16 MB intermediates alive at once
    a = jnp.tanh(x @ x)
    b = jnp.tanh(a @ x)
    return jnp.tanh(b @ a) @ b + a

x = jnp.ones((2048, 2048), jnp.float32)
jax.jit(temporaries).lower(x).compile()
step = host_memory.jit_step(temporaries)
step(x).block_until_ready()
print(step.keeps_buffers)
"""


def _temp_allocation_sizes(buffer_assignment: pathlib.Path) -> list[int]:
    lines = buffer_assignment.read_text().splitlines()
    return [
        int(m.group(1)) for line in lines if (m := re.match(r"allocation \d+: size (\d+), preallocated-temp", line))
    ]


@pytest.mark.skipif(not GLIBC, reason="the split temporaries go with glibc's malloc settings")
def test_step_temporaries_come_in_allocations_malloc_can_keep(tmp_path):
    out = _run_python(TEMP_ALLOCATIONS, XLA_FLAGS=f"--xla_dump_to={tmp_path}", JAX_PLATFORMS="cpu")
    assert out.split() == ["True"]
    default, kept = (
        _temp_allocation_sizes(path)
        for path in sorted(tmp_path.glob("*jit_temporaries*after_optimizations-buffer-assignment.txt"))
    )
    assert len(default) == 1 and default[0] > host_memory.STEP_HEAP_BYTES
    assert len(kept) > 1 and max(kept) <= host_memory.STEP_HEAP_BYTES
    assert sum(kept) >= default[0]


def test_a_step_with_an_array_too_large_to_keep_compiles_as_it_is():
    step = host_memory.jit_step(lambda x: jnp.tanh(x) * 2)
    large = jnp.ones((host_memory.STEP_HEAP_BYTES // 4 + 1024,), jnp.float32)
    assert float(step(large)[0]) == pytest.approx(2 * np.tanh(1.0))
    assert not step.keeps_buffers
    assert step.jitted._cache_size() == 1


def test_largest_array_read_from_the_lowered_module():
    lowered = jax.jit(lambda x, y: x.astype(jnp.bfloat16) @ y).lower(
        jnp.ones((64, 32), jnp.float32), jnp.ones((32, 3000), jnp.bfloat16)
    )
    assert host_memory.largest_array_bytes(lowered.as_text()) == 64 * 3000 * 2
