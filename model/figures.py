"""Confusion-matrix PNGs drawn with Pillow (no plotting library needed on a worker or a GPU box).

Column names are drawn rotated, so full class names fit however many classes there are.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 44
CHAR_WIDTH = 6       # Pillow's default bitmap font
LINE_HEIGHT = 12


def _label_span(classes: list[str]) -> int:
    return max((len(name) for name in classes), default=4) * CHAR_WIDTH + 16


def _rotated_label(text: str, font) -> Image.Image:
    label = Image.new("RGB", (len(text) * CHAR_WIDTH + 4, LINE_HEIGHT + 2), "white")
    ImageDraw.Draw(label).text((2, 0), text, fill="black", font=font)
    return label.rotate(90, expand=True)


def confusion_png(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    """Rows are the true classes, columns the predicted ones; darker cells hold more images."""
    n, span = len(classes), _label_span(classes)
    left, top = span + 10, span + 30
    width = max(left + n * CELL + 10, len(title) * CHAR_WIDTH + 20)
    height = top + n * CELL + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    peak = max((max(row) for row in matrix), default=0) or 1
    draw.text((10, 8), title, fill="black", font=font)
    draw.text((left, height - 18), "predicted", fill="black", font=font)
    draw.text((4, top - 16), "true", fill="black", font=font)
    for i, name in enumerate(classes):
        draw.text((4, top + i * CELL + CELL // 2 - 6), name, fill="black", font=font)
        column = _rotated_label(name, font)
        image.paste(column, (left + i * CELL + CELL // 2 - column.width // 2, top - 4 - column.height))
        for j in range(n):
            value = matrix[i][j]
            shade = int(255 - 200 * value / peak)
            x, y = left + j * CELL, top + i * CELL
            draw.rectangle((x, y, x + CELL - 2, y + CELL - 2), fill=(shade, shade, 255))
            draw.text((x + 6, y + CELL // 2 - 6), str(value), fill="black" if shade > 120 else "white", font=font)
    image.save(path)
