"""The main job on built-in defaults: what the models see on the shipped photos, written as a report."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from testbed.models.registry import get_entry, get_model, list_models
from testbed.photos import imagenet_view, list_photos


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    seed: int = 0
    quick: bool = False


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo and return the path of its Markdown report."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    lines = ["# testbed demo", "", f"seed {cfg.seed}; machine: {platform.machine()}, {os.cpu_count()} CPU cores; "
             f"torch {torch.__version__}; CUDA: {torch.cuda.is_available()}", ""]
    results: dict = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "classification": {}}

    photos = list_photos("photo")
    imagenet_models = [m for m in list_models("classification") if len(get_entry(m).labels) == 1000]
    lines += ["## ImageNet models on the shipped photos (top-1, probability)", "",
              "| photo | " + " | ".join(imagenet_models) + " |", "|---" * (len(imagenet_models) + 1) + "|"]
    preds: dict[str, dict[str, tuple[str, float]]] = {}
    for name in imagenet_models:
        model = get_model(name)
        device = next(model.parameters()).device
        batch = torch.cat([imagenet_view(p) for p in photos]).to(device)
        with torch.no_grad():
            probs = model(batch).softmax(-1).cpu()
        labels = get_entry(name).labels
        for p, row in zip(photos, probs):
            conf, idx = row.max(0)
            preds.setdefault(p, {})[name] = (labels[int(idx)], float(conf))
    for p in photos:
        cells = [f"{preds[p][m][0]} ({preds[p][m][1]:.2f})" for m in imagenet_models]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
        print(f"{p:20s} " + "  ".join(f"{m}: {c}" for m, c in zip(imagenet_models, cells)))
    results["classification"] = preds
    lines += ["", f"took {time.time() - started:.1f} s"]
    report = cfg.out / "report.md"
    _write_atomic(report, "\n".join(lines) + "\n")
    _write_atomic(cfg.out / "results.json", json.dumps(results, indent=2))
    return report
