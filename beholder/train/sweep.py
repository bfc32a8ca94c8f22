"""metrics.json, a training run's results, written here and read here: after a Hydra multirun, one
CSV row per run with its overrides and metrics."""

from __future__ import annotations

import glob
import json
import os

import yaml
from hydra.experimental.callback import Callback

from beholder.core.tables import csv_text

METRICS = "metrics.json"


def write_metrics(output_dir: str, metrics: dict) -> None:
    """A run's results, as the sweep summary reads them."""
    with open(os.path.join(output_dir, METRICS), "w") as f:
        json.dump(metrics, f, indent=2)


class SweepSummary(Callback):
    """Writes ``summary.csv`` in the sweep folder when a multirun ends: one row per finished run,
    with the overrides that differ between runs, then its metrics."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        runs = []
        for metrics_file in glob.glob(os.path.join(sweep_dir, "*", METRICS)):
            run_dir = os.path.dirname(metrics_file)
            with open(os.path.join(run_dir, ".hydra", "overrides.yaml")) as f:
                overrides = yaml.safe_load(f) or []
            with open(metrics_file) as f:
                runs.append((os.path.basename(run_dir), overrides, json.load(f)))
        if not runs:
            return
        runs.sort(key=lambda run: int(run[0]) if run[0].isdigit() else run[0])
        shared = set.intersection(*(set(overrides) for _, overrides, _ in runs)) if len(runs) > 1 else set()
        rows = [
            {"run": run, "overrides": " ".join(o for o in overrides if o not in shared), **metrics}
            for run, overrides, metrics in runs
        ]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(os.path.join(sweep_dir, "summary.csv"), "w") as f:
            f.write(csv_text(columns, rows))
        print(f"sweep summary: {os.path.join(sweep_dir, 'summary.csv')}")
