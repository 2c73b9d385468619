"""Review images: the contact sheet of the most confidently wrong predictions (Pillow, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from catdog.fsutil import atomic_path
from catdog.images import ImageError, open_image

THUMB = 192
CAPTION = 34
COLUMNS = 4


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def contact_sheet(items: list[tuple[Path, str, str]], dest: Path, title: str) -> None:
    """A grid of thumbnails, each captioned with two lines (e.g. its path and its p_dog); PNG, atomic."""
    font = ImageFont.load_default(size=12)
    rows = max(1, -(-len(items) // COLUMNS))
    header = 28
    sheet = Image.new("RGB", (COLUMNS * THUMB, header + rows * (THUMB + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title if items else f"{title}: none", fill="black", font=ImageFont.load_default(size=14))
    for i, (path, line1, line2) in enumerate(items):
        x, y = (i % COLUMNS) * THUMB, header + (i // COLUMNS) * (THUMB + CAPTION)
        try:
            with open_image(path) as im:
                thumb = ImageOps.contain(ImageOps.exif_transpose(im).convert("RGB"), (THUMB - 8, THUMB - 8))
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        except (OSError, ImageError):
            draw.text((x + 8, y + THUMB // 2), "(unreadable)", fill="red", font=font)
        draw.text((x + 4, y + THUMB), _fit(draw, line1, font, THUMB - 8), fill="black", font=font)
        draw.text((x + 4, y + THUMB + 15), _fit(draw, line2, font, THUMB - 8), fill="firebrick", font=font)
    with atomic_path(dest, ".png") as tmp:
        sheet.save(tmp, format="PNG")
