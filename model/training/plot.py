"""The training curves as a PNG, drawn with Pillow: loss on the left, accuracies on the right."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

PANEL, MARGIN = 360, 40
COLORS = {
    "loss": (200, 60, 40),
    "train_accuracy": (40, 110, 200),
    "val_top1": (30, 150, 70),
    "val_top5": (150, 110, 30),
}


def plot_history(history: list[dict], path: str | Path) -> Path:
    """history: one dict per epoch with epoch, loss, train_accuracy, val_top1 and val_top5 (each may be
    None or, in runs from before val_top5, absent)."""
    image = Image.new("RGB", (2 * PANEL + 3 * MARGIN, PANEL + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(image)
    epochs = [entry["epoch"] for entry in history]
    losses = [entry["loss"] for entry in history]
    _panel(draw, MARGIN, epochs, {"loss": losses}, top=max(losses, default=1.0) * 1.05, title="contrastive loss")
    accuracies = {key: [entry.get(key) for entry in history] for key in ("train_accuracy", "val_top1", "val_top5")}
    _panel(draw, 2 * MARGIN + PANEL, epochs, accuracies, top=1.0, title="train batch top-1 / validation top-1, top-5")
    image.save(path)
    return Path(path)


def _panel(
    draw: ImageDraw.ImageDraw, left: int, epochs: list[int], series: dict[str, list], top: float, title: str
) -> None:
    bottom_y, right = MARGIN + PANEL, left + PANEL
    draw.rectangle((left, MARGIN, right, bottom_y), outline="black")
    draw.text((left, MARGIN - 28), title, fill="black")
    draw.text((left - 30, MARGIN - 6), f"{top:.2g}", fill="black")
    draw.text((left - 12, bottom_y - 6), "0", fill="black")
    last = max(epochs, default=1)
    draw.text((right - 40, bottom_y + 6), f"epoch {last}", fill="black")
    for row, (name, values) in enumerate(series.items()):
        points = [
            (left + PANEL * epoch / last, bottom_y - PANEL * value / top)
            for epoch, value in zip(epochs, values)
            if value is not None
        ]
        if len(points) > 1:
            draw.line(points, fill=COLORS[name], width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLORS[name])
        draw.text((left + 8, MARGIN + 8 + 14 * row), name, fill=COLORS[name])
