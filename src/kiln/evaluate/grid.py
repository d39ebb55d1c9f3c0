"""A grid of small images, each with a caption of a line or two, drawn straight into one PNG with
Pillow: the report's sample predictions and mistakes. Drawing the same grid as 32 matplotlib axes
took over a second; this takes milliseconds."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from kiln.io import write_bytes_atomic

WRONG = (198, 40, 40)  # captions and borders of wrong answers
TEXT = (31, 35, 40)
CELL = 96  # pixels per image side (small images are enlarged without smoothing)
FONT = 11
PAD = 6


@dataclass
class Cell:
    image: torch.Tensor  # uint8 (C, H, W), one or three channels
    caption: str  # one or two lines
    wrong: bool = False


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font where FreeType is there
    except TypeError:  # pragma: no cover (Pillow < 10.1)
        return ImageFont.load_default()


def _picture(image: torch.Tensor) -> Image.Image:
    """A uint8 (C, H, W) tensor as an RGB picture CELL pixels on its longer side."""
    array = image.detach().cpu()
    array = array[:1] if array.shape[0] != 3 else array  # one channel (or an odd count: the first)
    picture = Image.fromarray(array.permute(1, 2, 0).squeeze(2).numpy()).convert("RGB")
    scale = CELL / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)


def draw_grid(cells: list[Cell], title: str, columns: int = 8) -> Image.Image:
    """The cells in rows of `columns` under `title`; wrong ones framed and captioned in red."""
    font, title_font = _font(FONT), _font(FONT + 2)
    columns = max(1, min(columns, len(cells)))
    rows = max(1, -(-len(cells) // columns))
    caption_h = 2 * (FONT + 3)
    cell_w, cell_h = CELL + 2 * PAD, CELL + caption_h + 2 * PAD
    top = FONT + 2 + 3 * PAD
    sheet = Image.new("RGB", (columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=TEXT, font=title_font)
    for n, cell in enumerate(cells):
        x, y = (n % columns) * cell_w + PAD, top + (n // columns) * cell_h + PAD
        picture = _picture(cell.image)
        sheet.paste(picture, (x + (CELL - picture.width) // 2, y + (CELL - picture.height) // 2))
        if cell.wrong:
            draw.rectangle((x - 3, y - 3, x + CELL + 2, y + CELL + 2), outline=WRONG, width=3)
        color = WRONG if cell.wrong else TEXT
        for line_no, line in enumerate(cell.caption.splitlines()[:2]):
            draw.text((x, y + CELL + 4 + line_no * (FONT + 3)), _fit(draw, line, font), fill=color,
                      font=font)  # fmt: skip
    return sheet


def _fit(draw: ImageDraw.ImageDraw, line: str, font) -> str:
    """The line, cut short with an ellipsis where it would run into the next cell."""
    if draw.textlength(line, font=font) <= CELL + PAD:
        return line
    while line and draw.textlength(line + "...", font=font) > CELL + PAD:
        line = line[:-1]
    return line + "..."


def save_grid(cells: list[Cell], title: str, path: Path, columns: int = 8) -> Path:
    """Draw the grid and write it as a PNG (through a temporary file: never half a PNG)."""
    buffer = io.BytesIO()
    draw_grid(cells, title, columns).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return path
