"""The benchmark's rows: what each holds, the printed table, and the medians of several rounds."""

from __future__ import annotations

import datetime
import os
import statistics

import jax

COLUMNS = ["model", "setting", "unit", "ours", "reference", "reference_value", "ratio", "device", "date"]
# Environment variables that change how either framework's memory is allocated on a CPU.
ALLOCATOR_VARIABLES = ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF")


def allocator_environment() -> str:
    """The allocator settings both sides of a row ran under (they share one process)."""
    settings = [f"{name}={os.environ[name]}" for name in ALLOCATOR_VARIABLES if os.environ.get(name)]
    return ", ".join(settings) or "default allocator"


def describe_device() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU, {os.cpu_count()} cores, {allocator_environment()}"
    return device.device_kind


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def row(model: str, setting: str, unit: str, ours: float, reference_name: str, reference: float | None) -> dict:
    return {
        "model": model,
        "setting": setting,
        "unit": unit,
        "ours": _significant(ours),
        "reference": reference_name if reference is not None else "-",
        "reference_value": None if reference is None else _significant(reference),
        "ratio": None if reference is None else round(ours / reference, 2),
        "device": describe_device(),
        "date": datetime.date.today().isoformat(),
    }


def format_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    cells = [[str(r[c]) if r[c] is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def median_of_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per row of a round: the medians of ours and of the reference over the rounds."""
    combined = []
    for runs in zip(*rounds, strict=True):
        first = runs[0]
        ours = statistics.median(run["ours"] for run in runs)
        setting = f"{first['setting']}, median of {len(runs)} processes"
        reference = None
        if first["reference_value"] is not None:
            reference = statistics.median(run["reference_value"] for run in runs)
            ratios = sorted(run["ratio"] for run in runs)
            setting += f" (ratios {ratios[0]}-{ratios[-1]})"
        combined.append(row(first["model"], setting, first["unit"], ours, first["reference"], reference))
    return combined
