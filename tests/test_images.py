import io
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from catdog.images import ImageError, check_image, inspect_file, load_image
from conftest import make_image


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"), ("BMP", ".bmp"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_every_common_format_decodes_to_square_rgb_uint8(tmp_path, fmt, suffix):
    path = make_image(tmp_path / f"x{suffix}", fmt=fmt)
    array = load_image(path, 24)
    assert array.shape == (24, 24, 3) and array.dtype == np.uint8


def test_a_lying_extension_does_not_matter(tmp_path):
    path = make_image(tmp_path / "really_a_png.jpg", fmt="PNG")
    assert load_image(path, 16).shape == (16, 16, 3)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "1", "I;16", "I", "F"])
def test_every_pixel_mode_converts_to_rgb(tmp_path, mode):
    image = Image.new(mode, (20, 10))
    path = tmp_path / f"img_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'tiff' if mode in ('I;16', 'I', 'F') else 'png'}"
    image.save(path)
    assert load_image(path, 8).shape == (8, 8, 3)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    array = np.full((10, 10), 65535, dtype=np.uint16)
    path = tmp_path / "white16.png"
    Image.fromarray(array).save(path)
    assert load_image(path, 4).min() == 255


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(path)
    assert (load_image(path, 4) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 landscape image tagged "rotate 90": upright it is portrait, left half red becomes the top or bottom.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    upright = load_image(path, 20)
    top, bottom = upright[:8].mean(axis=(0, 1)), upright[-8:].mean(axis=(0, 1))
    assert (top[0] > 200) != (bottom[0] > 200), "red half should be at the top or bottom after rotation"
    assert upright[:, :8, 0].mean() == pytest.approx(upright[:, -8:, 0].mean(), abs=20)


def test_gif_uses_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_image(path, 4)[..., 0].mean() > 200


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"hello, I am a text file", "not an image"),
    ],
)
def test_unusable_files_raise_a_one_line_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(path, 8)


def test_truncated_jpeg_is_rejected(tmp_path):
    path = make_image(tmp_path / "full.jpg", size=(200, 150))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path, 8)
    assert check_image(path.read_bytes()) is not None


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # tiny file, 400 Mpx
    with pytest.raises(ImageError, match="image too large: 20000x20000"):
        load_image(path, 8, max_pixels=50_000_000)


def test_inspect_file_hashes_content_and_reports_validity(tmp_path):
    good = make_image(tmp_path / "a.png", fmt="PNG")
    copy = tmp_path / "b.png"
    copy.write_bytes(good.read_bytes())
    (tmp_path / "c.png").write_bytes(b"junk")
    digest_a, reason_a = inspect_file(good)
    digest_b, _ = inspect_file(copy)
    _, reason_c = inspect_file(tmp_path / "c.png")
    assert digest_a == digest_b and len(digest_a) == 64
    assert reason_a is None and reason_c.startswith("not an image")


def test_decode_runs_inside_the_gate_told_its_pixel_count_after_jpeg_scaling(tmp_path):
    seen = []

    @contextmanager
    def gate(pixels):
        seen.append(("enter", pixels))
        yield
        seen.append(("exit", pixels))

    load_image(make_image(tmp_path / "a.png", size=(300, 200)), 32, gate=gate)
    load_image(make_image(tmp_path / "b.jpg", size=(2000, 1600)), 32, gate=gate)  # decoded at 1/8 scale
    assert seen == [("enter", 60_000), ("exit", 60_000), ("enter", 250 * 200), ("exit", 250 * 200)]


def test_sixteen_bit_gray_converts_like_eight_bit():
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    got = load_image(buf.getvalue(), 16).astype(int)
    eight = io.BytesIO()
    Image.fromarray((ramp / 257 + 0.5).astype(np.uint8)).save(eight, format="PNG")
    want = load_image(eight.getvalue(), 16).astype(int)
    assert np.abs(got - want).max() <= 1 and (got[..., 0] == got[..., 2]).all()
