"""Operation-level profiles of a few train steps, from JAX's and PyTorch's own profilers.

Each profile is written to disk (JAX: its trace directory with a Perfetto trace; PyTorch: a Chrome
trace) and summarised as what ran per step: how many kernels (on a GPU) or operations (on the CPU),
their summed time, and the operations that took longest, grouped by kind.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import json
import pathlib
import re
import sys
from collections.abc import Iterator

import jax

TOP_OPERATIONS = 15


@dataclasses.dataclass
class ProfileSummary:
    unit: str  # what was counted: "GPU kernels", "XLA:CPU thunks", "PyTorch CPU operators"
    count_per_step: float
    busy_ms_per_step: float  # summed durations; overlapping work on several threads adds up
    top: list[tuple[str, float, float]]  # (kind, calls per step, ms per step), longest first

    def format(self, title: str) -> str:
        lines = [
            f"{title}: {self.count_per_step:.0f} {self.unit} per step, {self.busy_ms_per_step:.2f} ms summed",
            f"  {'ms/step':>9} {'calls/step':>10}  kind",
        ]
        lines += [f"  {ms:9.3f} {calls:10.1f}  {name[:100]}" for name, calls, ms in self.top]
        return "\n".join(lines)


def _kind(name: str) -> str:
    """An operation's name without its instance number: `loop_add_fusion.12` -> `loop_add_fusion`."""
    return re.sub(r"([._]\d+)+$", "", name)


def _summarise(unit: str, operations: list[tuple[str, int, float]], steps: int) -> ProfileSummary:
    """`operations`: (name, calls, total microseconds) over `steps` steps."""
    total_us: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for name, count, duration in operations:
        total_us[_kind(name)] += duration
        calls[_kind(name)] += count
    top = [(name, calls[name] / steps, us / steps / 1e3) for name, us in total_us.most_common(TOP_OPERATIONS)]
    return ProfileSummary(unit, sum(calls.values()) / steps, sum(total_us.values()) / steps / 1e3, top)


def summarise_jax_trace(events: list[dict], steps: int) -> ProfileSummary:
    """The device's kernels in a JAX Perfetto trace; on the CPU, XLA's thunks (events naming an HLO op).

    On a GPU the device process has one line per CUDA stream (`Stream #...`) with the kernels as they
    ran, beside lines that repeat the same time per HLO op or module; only the streams are counted.
    """
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    complete = [e for e in events if e.get("ph") == "X"]
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if devices:
        on_device = [e for e in complete if e["pid"] in devices]
        streams = [e for e in on_device if threads.get((e["pid"], e.get("tid")), "").startswith("Stream")]
        chosen, unit = streams or on_device, "GPU kernels"
    else:
        chosen, unit = [e for e in complete if "hlo_op" in e.get("args", {})], "XLA:CPU thunks"
    return _summarise(unit, [(e["name"], 1, float(e.get("dur", 0))) for e in chosen], steps)


def _report(out_dir: pathlib.Path, title: str, summary: ProfileSummary) -> None:
    text = summary.format(title)
    (out_dir / "summary.txt").write_text(text + "\n")
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def jax_profile(out_dir: pathlib.Path, steps: int, title: str) -> Iterator[None]:
    """Traces the `steps` steps run inside the block (which must wait for their results) into
    `out_dir`, and prints and writes (`summary.txt`) their summary."""
    with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
        yield
    trace = max(out_dir.rglob("*.trace.json.gz"), key=lambda path: path.stat().st_mtime)
    with gzip.open(trace) as f:
        loaded = json.load(f)
    _report(out_dir, title, summarise_jax_trace(loaded["traceEvents"] if isinstance(loaded, dict) else loaded, steps))


def summarise_torch_profile(averages, steps: int, on_gpu: bool) -> ProfileSummary:
    """PyTorch's `key_averages()`: the CUDA kernels on a GPU, else the operators' self CPU time."""
    from torch.autograd import DeviceType

    if on_gpu:
        kernels = [(a.key, a.count, a.self_device_time_total) for a in averages if a.device_type == DeviceType.CUDA]
        return _summarise("GPU kernels", kernels, steps)
    operators = [
        (a.key, a.count, a.self_cpu_time_total)
        for a in averages
        if a.device_type == DeviceType.CPU and a.self_cpu_time_total > 0
    ]
    return _summarise("PyTorch CPU operators", operators, steps)


@contextlib.contextmanager
def torch_profile(out_dir: pathlib.Path, steps: int, title: str) -> Iterator[None]:
    """PyTorch's profiler over the block (which must synchronise at its end), written to
    `out_dir/trace.json` (Chrome trace) and summarised as by `jax_profile`."""
    import torch

    on_gpu = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as profiler:
        yield
    out_dir.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(out_dir / "trace.json"))
    _report(out_dir, title, summarise_torch_profile(profiler.key_averages(), steps, on_gpu))
