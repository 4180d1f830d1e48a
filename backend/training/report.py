"""A version's report: metrics.json and one confusion-matrix PNG per task, drawn with Pillow
(no plotting library needed on a worker)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 44
MARGIN = 110


def confusion_png(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    n = len(classes)
    width, height = MARGIN + n * CELL + 10, MARGIN + n * CELL + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    peak = max((max(row) for row in matrix), default=0) or 1
    draw.text((10, 8), title, fill="black", font=font)
    draw.text((MARGIN, height - 18), "predicted", fill="black", font=font)
    draw.text((4, MARGIN - 16), "true", fill="black", font=font)
    for i, name in enumerate(classes):
        draw.text((4, MARGIN + i * CELL + CELL // 2 - 6), name[:16], fill="black", font=font)
        draw.text((MARGIN + i * CELL + 2, MARGIN - 14 - (i % 2) * 12), name[:7], fill="black", font=font)
        for j in range(n):
            value = matrix[i][j]
            shade = int(255 - 200 * value / peak)
            x, y = MARGIN + j * CELL, MARGIN + i * CELL
            draw.rectangle((x, y, x + CELL - 2, y + CELL - 2), fill=(shade, shade, 255))
            draw.text((x + 6, y + CELL // 2 - 6), str(value), fill="black" if shade > 120 else "white", font=font)
    image.save(path)


def write_report(folder: Path, meta: dict) -> list[str]:
    """Writes report/metrics.json and report/confusion_<task>.png; returns the file names."""
    out = Path(folder) / "report"
    out.mkdir(exist_ok=True)
    metrics = meta.get("metrics") or {}
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "history": (meta.get("training") or {})
                                                 .get("history")}, indent=2), encoding="utf-8")
    files = ["metrics.json"]
    for task, m in metrics.items():
        if m and m.get("confusion"):
            name = f"confusion_{task}.png"
            confusion_png(m["confusion"], list(meta["classes"][task]),
                          f"{task}: accuracy {m['accuracy']:.2f}, macro-F1 {m['macro_f1']:.2f}", out / name)
            files.append(name)
    return files
