"""A version's report: metrics.json (held-out metrics with their bootstrap intervals, the training
history, the cross-validation's spread when it chose the epochs) and one confusion-matrix PNG per
task (model/figures.py draws them)."""
from __future__ import annotations

import json
from pathlib import Path

from model.bootstrap import with_intervals
from model.figures import confusion_png


def write_report(folder: Path, meta: dict) -> list[str]:
    """Writes report/metrics.json and report/confusion_<task>.png; returns the file names."""
    out = Path(folder) / "report"
    out.mkdir(exist_ok=True)
    metrics = with_intervals(meta.get("metrics") or {})
    training = meta.get("training") or {}
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "history": training.get("history"),
                                                 "crossval": training.get("crossval")}, indent=2), encoding="utf-8")
    files = ["metrics.json"]
    for task, m in metrics.items():
        if m and m.get("confusion"):
            name = f"confusion_{task}.png"
            confusion_png(m["confusion"], list(meta["classes"][task]),
                          f"{task}: accuracy {m['accuracy']:.2f}, macro-F1 {m['macro_f1']:.2f}", out / name)
            files.append(name)
    return files
