"""Host memory for XLA:CPU's steps: malloc on transparent huge pages, and step buffers kept.

XLA:CPU allocates each step's temporaries afresh (260 MB for MobileViT-XXS at batch 64, 64 px).
glibc serves allocations this large with a fresh `mmap` and returns them with `munmap`, so every
step touches 63,600 new 4 KB pages: 110-125 ms of kernel time per step on a 2-core machine, a
third of the step's CPU time (docs/performance.md). With glibc's `glibc.malloc.hugetlb=1` tunable,
malloc asks for transparent huge pages on its large mappings, and a step faults about 650 times
instead.

glibc reads its tunables only when a process starts, so the command-line entry points re-execute
themselves once with the tunable added. Setting `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` (or any
value of that tunable) keeps a process as it is.

`jit_step` goes further, and needs no restart: XLA:CPU packs a step's temporaries into one
allocation, too large for malloc ever to keep; in a step whose arrays all fit in `STEP_HEAP_BYTES`,
capped at that size they become several allocations, and with malloc set to keep freed memory
(`keep_freed_memory`) every step reuses the last one's pages instead of faulting in new ones.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

# XLA:CPU's temporaries per allocation: under glibc's largest mmap threshold (32 MB on 64-bit).
STEP_HEAP_BYTES = 16 << 20
# mallopt(3) parameters from glibc's malloc.h, and the values that make malloc keep freed memory:
# allocations up to 32 MB from the heap instead of their own mappings, no trimming of a heap's free
# top, and 64 MB of padding, without which glibc unmaps a thread's heap as soon as it is all free.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP_FREED_MEMORY = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))


def transparent_huge_page_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode ("always", "madvise" or "never"), or None where there is no such file."""
    try:
        with open(path) as f:
            modes = f.read().split()
    except OSError:
        return None
    return next((mode[1:-1] for mode in modes if mode.startswith("[")), None)


def environment_with_huge_pages(environ: Mapping[str, str], thp_mode: str | None) -> dict[str, str] | None:
    """`environ` with glibc's hugetlb tunable added, or None where adding it would change nothing.

    Only "madvise" needs it: under "always" the kernel already backs large mappings with huge
    pages, under "never" it does not whatever malloc asks.
    """
    if thp_mode != "madvise" or platform.libc_ver()[0] != "glibc":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if HUGETLB_TUNABLE in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{HUGETLB_TUNABLE}=1"]))}


def reexec_with_huge_pages() -> None:
    """Restarts this command with the tunable set, where it is not yet; returns where nothing changes.

    Call it only from a `__main__` entry point: it replaces the running process.
    """
    environ = environment_with_huge_pages(os.environ, transparent_huge_page_mode())
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, environ)


@functools.cache
def keep_freed_memory() -> bool:
    """Sets glibc's malloc, for the whole process, to keep freed memory for the next allocations.

    Returns whether it did; only glibc has these settings.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in _KEEP_FREED_MEMORY)


def largest_array_bytes(lowered_text: str) -> int:
    """The size of the largest array (`tensor<...>` type) in the text of a lowered StableHLO module."""
    largest = 0
    for dims, dtype in re.findall(r"tensor<((?:\d+x)+)([a-z]+\d+)>", lowered_text):
        elements = math.prod(int(d) for d in dims[:-1].split("x"))
        largest = max(largest, elements * max(1, int(re.sub(r"\D", "", dtype)) // 8))
    return largest


def jit_step(fn: Callable, **jit_kwargs: Any) -> CpuAwareStep:
    """`jax.jit(fn, **jit_kwargs)`, except on the CPU with glibc for a step whose arrays all fit in
    `STEP_HEAP_BYTES`: its temporaries then come in allocations of at most that size, with malloc
    set to keep them between steps (MobileViT-XXS's b64 64 px step: no page faults, 137 -> 95 ms;
    docs/performance.md, attempt 41). Where an array is larger (GPT-2's logits, MobileNetV2 at
    96 px), splitting measured slower, so such steps compile as they are.
    """
    return CpuAwareStep(fn, jit_kwargs)


class CpuAwareStep:
    """The step `jit_step` returns. The choice is made at the first call: `jitted` is then the
    jitted function in use, and `keeps_buffers` says whether it is the split one."""

    def __init__(self, fn: Callable, jit_kwargs: dict[str, Any]):
        import jax

        self._fn, self._jit_kwargs = fn, jit_kwargs
        self._plain = jax.jit(fn, **jit_kwargs)
        self.jitted: Callable | None = None

    @property
    def keeps_buffers(self) -> bool:
        return self.jitted is not None and self.jitted is not self._plain

    def __call__(self, *args):
        if self.jitted is None:
            self.jitted = self._choose(args)
        return self.jitted(*args)

    def _choose(self, args: tuple) -> Callable:
        import jax

        fits = (
            jax.default_backend() == "cpu"
            and largest_array_bytes(self._plain.lower(*args).as_text()) <= STEP_HEAP_BYTES
        )
        if not (fits and keep_freed_memory()):
            return self._plain
        options = {"xla_multiheap_size_constraint_per_heap": STEP_HEAP_BYTES}
        return jax.jit(self._fn, compiler_options=options, **self._jit_kwargs)
