"""Reading a chart PNG back, as a person would look at it: which colours are drawn where."""

from __future__ import annotations

import io

from PIL import Image


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.convert("RGB")


def rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def pixels_of(image: Image.Image, colour: str, tolerance: int = 12) -> list[tuple[int, int]]:
    """(x, y) of every pixel within `tolerance` of `colour` (the middle of a line is drawn in its exact colour)."""
    r, g, b = rgb(colour)
    data, width = image.tobytes(), image.width
    near = tolerance
    return [(n // 3 % width, n // 3 // width) for n in range(0, len(data), 3)
            if abs(data[n] - r) <= near and abs(data[n + 1] - g) <= near and abs(data[n + 2] - b) <= near]


def horizontal_rows(points: list[tuple[int, int]], min_width: int) -> list[int]:
    """Rows in which the points span at least `min_width` pixels: a horizontal line, dashed or not."""
    rows: dict[int, list[int]] = {}
    for x, y in points:
        rows.setdefault(y, []).append(x)
    return sorted(y for y, xs in rows.items() if max(xs) - min(xs) >= min_width)
