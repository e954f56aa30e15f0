"""Metrics out: one line per log step to stdout and `metrics.jsonl`, TensorBoard events, and the
training curves as a PNG. Only process 0 writes."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax

from megathread_jax import progress

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class MetricWriter:
    def __init__(self, workdir: str | pathlib.Path, *, label: str = ""):
        self.workdir = pathlib.Path(workdir)
        self.label = label
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        record = {"step": step, "split": split, **values}
        with open(self.workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in values.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        progress.message(f"[{split}] step {step}: {shown}{'  ' + self.label if self.label else ''}")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def plot_curves(self) -> pathlib.Path | None:
        """Loss and accuracy against step from the whole `metrics.jsonl` (resumed runs included)."""
        path = self.workdir / METRICS_FILE
        if not self.enabled or not path.is_file():
            return None
        # An explicit Figure: no pyplot, so a notebook's own backend and figures are left alone.
        from matplotlib.figure import Figure

        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        latest = {}
        for r in records:  # a resumed run may log a step twice; keep the last
            latest[(r["split"], r["step"])] = r
        fig = Figure(figsize=(11, 4), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        for split, style in (("train", "-"), ("val", "o-")):
            rows = sorted((r for (s, _), r in latest.items() if s == split), key=lambda r: r["step"])
            if not rows:
                continue
            steps = [r["step"] for r in rows]
            ax_loss.plot(steps, [r["loss"] for r in rows], style, label=f"{split} loss")
            for metric in ("top1", "top5", "accuracy"):
                if metric in rows[0]:
                    ax_acc.plot(steps, [r[metric] for r in rows], style, label=f"{split} {metric}")
        for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.set_xlabel("step")
            ax.set_ylabel(title)
            ax.set_title(f"{title}{' - ' + self.label if self.label else ''}")
            ax.legend()
            ax.grid(alpha=0.3)
        out = self.workdir / CURVES_FILE
        fig.savefig(out, dpi=100)
        return out
