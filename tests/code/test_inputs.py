"""service/inputs/: uploads of every common kind come back as the MNIST digit they show, and bad
input is refused with a reason, an HTTP status and a message that says what to fix."""

from __future__ import annotations

import base64
import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from scipy.ndimage import shift

from service.inputs.arrays import pixels
from service.inputs.data_urls import from_data_url
from service.inputs.limits import Limits
from service.inputs.mnist import to_mnist
from service.inputs.pictures import WORK_SIDE, decode_image, from_image_bytes
from service.refusals import Rejected
from tests.helpers import FIXTURE
from tests.uploads import STYLES, data_url, place, render

N_DIGITS = 40  # per style; each style gets its own slice of the fixture's test digits
INDEX = np.arange(28)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    with np.load(FIXTURE) as f:
        return f["x_test"]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def _shifted(x: np.ndarray, pixels: float) -> float:
    """The correlation a digit keeps with itself moved `pixels` sideways (linear interpolation).

    The bars below are built from it: MNIST centres by the centre of mass rounded to whole pixels,
    so a faithful redo of its procedure may put a digit up to half a pixel off; on the fixture a
    half-pixel move keeps ~0.95, a whole pixel ~0.80, another digit of the same class ~0.45.
    """
    return _corr(shift(x.astype(np.float64), (0, pixels), order=1), x)


@pytest.fixture(scope="module")
def half_pixel(digits) -> float:
    """The bar for one digit: the fixture's median correlation under a half-pixel move."""
    return float(np.median([_shifted(x, 0.5) for x in digits[:200]]))


@pytest.fixture(scope="module")
def one_pixel(digits) -> float:
    """What a digit misplaced by a whole pixel still scores (median over the fixture)."""
    return float(np.median([_shifted(x, 1.0) for x in digits[:200]]))


def _com(image: np.ndarray) -> tuple[float, float]:
    mass = image.sum(dtype=float)
    return image.sum(axis=1) @ INDEX / mass, image.sum(axis=0) @ INDEX / mass


def _box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(image)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _paper(x28: np.ndarray, seed: int = 0, side: int = 280) -> np.ndarray:
    """uint8 grey: the digit in black on white, off-centre on a side×side page."""
    ink = place(x28, side, np.random.default_rng(seed))
    return np.rint((1.0 - ink) * 255).astype(np.uint8)


def _rejected(call, *args, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as info:
        call(*args, **kwargs)
    exc = info.value
    assert isinstance(exc, ValueError) and str(exc) == exc.message and exc.message
    return exc


# --- the round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_every_upload_style_comes_back_as_the_mnist_digit(digits, style):
    start = STYLES.index(style) * N_DIGITS % (len(digits) - N_DIGITS)
    sample = digits[start : start + N_DIGITS]
    scores = []
    for seed, x in enumerate(sample):
        out = from_image_bytes(render(x, style, seed=seed))
        assert out.dtype == np.uint8 and out.shape == (28, 28)
        cy, cx = _com(out)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
        assert max(_box(out)) == 20  # the longer side is fit to 20 px, as MNIST's
        scores.append(_corr(out, x))
    half = [_shifted(x, 0.5) for x in sample]  # what half a pixel off would score
    assert np.mean(scores) > np.mean(half), f"{style}: {np.mean(scores):.3f}, {np.mean(half):.3f}"
    assert np.median(scores) > np.median(half)


def test_a_raw_mnist_digit_comes_back_nearly_unchanged(digits):
    """Already MNIST-shaped, so it should move less than a quarter of a pixel on the whole."""
    scores = [_corr(to_mnist(x / 255.0), x) for x in digits[:50]]
    quarter = [_shifted(x, 0.25) for x in digits[:50]]
    assert np.mean(scores) > np.mean(quarter) and np.median(scores) > np.median(quarter)


def test_light_on_dark_and_dark_on_light_give_the_same_digit(digits):
    for seed, x in enumerate(digits[:10]):
        paper = _paper(x, seed)
        dark_on_light = from_image_bytes(_encode(Image.fromarray(paper)))
        light_on_dark = from_image_bytes(_encode(Image.fromarray(255 - paper)))
        assert np.abs(dark_on_light.astype(int) - light_on_dark).max() <= 1


def test_the_aspect_ratio_is_kept():
    page = np.full((280, 280), 255, np.uint8)
    page[30:150, 200:212] = 0  # a tall thin "1", top right
    one = from_image_bytes(_encode(Image.fromarray(page)))
    assert _box(one)[0] == 20 and _box(one)[1] <= 4
    assert all(abs(c - 14) <= 1 for c in _com(one))
    page = np.full((100, 300), 255, np.uint8)
    page[60:66, 20:140] = 0  # a wide dash
    dash = from_image_bytes(_encode(Image.fromarray(page)))
    assert _box(dash)[1] == 20 and _box(dash)[0] <= 3


def test_uneven_light_and_a_speck_of_dust_do_not_move_the_digit(digits, half_pixel):
    x = digits[0]
    ys, xs = np.mgrid[0:300, 0:400]
    light = 0.5 + 0.35 * xs / 400 + 0.1 * ys / 300  # a strong gradient across the page
    ink = np.zeros((300, 400), np.float32)
    ink[:, 50:350] = place(x, 300, np.random.default_rng(3))
    grey = light * (1 - 0.7 * ink)
    grey[280:284, 380:384] = 0.1  # dust far from the digit
    out = to_mnist(grey)
    assert _corr(out, x) > half_pixel


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured(digits, orientation):
    page = np.hstack([_paper(digits[1], side=120), np.full((120, 40), 255, np.uint8)])
    upright = Image.fromarray(page)  # not square, so a wrong turn changes the shape
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    simple = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        7: Image.Transpose.TRANSVERSE,
    }
    method = inverse.get(orientation, simple.get(orientation))
    stored = upright.transpose(method) if method is not None else upright.copy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(stored, "PNG", exif=exif.tobytes())
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))  # Pillow's own reading
    assert np.array_equal(np.asarray(reference), np.asarray(upright))
    assert np.array_equal(decode_image(data), np.asarray(upright, np.float32) / 255)


def test_transparent_strokes_become_a_visible_digit():
    alpha = np.zeros((60, 60), np.uint8)
    alpha[10:50, 28:33] = 255
    for colour, ink, background in ((0, 0.0, 1.0), (255, 1.0, 0.0)):
        rgba = np.zeros((60, 60, 4), np.uint8)
        rgba[..., :3] = colour  # one colour everywhere: the drawing is in alpha alone
        rgba[..., 3] = alpha
        grey = decode_image(_encode(Image.fromarray(rgba)))
        assert grey[30, 30] == pytest.approx(ink) and grey[5, 5] == pytest.approx(background)


def _modes(paper: np.ndarray) -> dict[str, bytes]:
    """The same dark-on-light page in each pixel mode and a format that stores it."""
    grey = Image.fromarray(paper)
    rgba = np.zeros((*paper.shape, 4), np.uint8)
    rgba[..., 3] = 255 - paper
    return {
        "1": _encode(grey.point(lambda v: 255 * (v > 128)).convert("1")),
        "L": _encode(grey),
        "P": _encode(grey.convert("RGB").quantize(colors=16)),
        "RGB tiff": _encode(grey.convert("RGB"), "TIFF"),
        "CMYK tiff": _encode(grey.convert("RGB").convert("CMYK"), "TIFF"),
        "LA": _encode(Image.fromarray(np.stack([paper, 255 - paper], 2), "LA")),
        "RGBA webp": _encode(Image.fromarray(rgba), "WEBP", lossless=True),
        "I;16 png": _encode(Image.fromarray(paper.astype(np.uint16) * 257)),
        "I tiff": _encode(Image.fromarray(paper.astype(np.int32) * 257), "TIFF"),
        "F tiff": _encode(Image.fromarray(paper.astype(np.float32) / 255), "TIFF"),
    }


def test_every_pixel_mode_decodes_to_the_digit(digits, half_pixel):
    x = digits[2]
    for mode, data in _modes(_paper(x, seed=5)).items():
        assert _corr(from_image_bytes(data), x) > half_pixel, mode


def test_only_the_first_gif_frame_counts(digits, half_pixel, one_pixel):
    first, second = (Image.fromarray(_paper(x)).convert("P") for x in digits[3:5])
    gif = _encode(first, "GIF", save_all=True, append_images=[second], duration=100)
    out = from_image_bytes(gif)
    assert _corr(out, digits[3]) > half_pixel and _corr(out, digits[4]) < one_pixel


def test_large_pictures_are_decoded_shrunk(digits, half_pixel):
    x = digits[6]
    paper = _paper(x, side=2400)  # the digit drawn small relative to the page, still ~150 px
    for fmt in ("PNG", "JPEG"):
        data = _encode(Image.fromarray(paper), fmt, compress_level=1, quality=85)
        grey = decode_image(data)
        assert max(grey.shape) <= WORK_SIDE and grey.shape[0] == grey.shape[1]
        assert _corr(to_mnist(grey), x) > half_pixel, fmt


# --- refusals -----------------------------------------------------------------------------------


def _declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is patched to declare width×height (a decompression bomb)."""
    data = bytearray(_encode(Image.new("L", (8, 8), 255)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_bad_bytes_are_refused_with_reason_and_status(digits):
    png = render(digits[0], "canvas_png")
    jpeg = render(digits[0], "jpeg75")
    ico = _encode(Image.new("L", (16, 16)), "ICO")  # readable by Pillow, but no upload format
    cases = [
        (b"", Limits(), "empty_body", 400),
        (b"hello", Limits(), "not_an_image", 400),
        (ico, Limits(), "not_an_image", 400),
        (png[: len(png) // 2], Limits(), "truncated_image", 400),
        (jpeg[: len(jpeg) // 2], Limits(), "truncated_image", 400),
        (png, Limits(max_bytes=len(png) - 1), "too_large", 413),
        (png, Limits(max_pixels=279 * 280), "too_many_pixels", 413),
    ]
    for data, limits, reason, status in cases:
        exc = _rejected(decode_image, data, limits)
        assert (exc.reason, exc.status) == (reason, status), exc.message
    assert "PNG, JPEG" in _rejected(decode_image, b"hello").message
    limit = f"{len(png) - 1:,} bytes"
    assert limit in _rejected(decode_image, png, Limits(max_bytes=len(png) - 1)).message


@pytest.mark.parametrize("size", [(30_000, 30_000), (7_000, 6_000)])
def test_a_decompression_bomb_is_refused_from_its_header(size, monkeypatch):
    decoded, load = [], ImageFile.ImageFile.load  # Pillow's pixel decoding, watched
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im) or load(im))
    exc = _rejected(decode_image, _declaring(*size))
    assert (exc.reason, exc.status) == ("too_many_pixels", 413)
    assert decoded == []
    decode_image(_encode(Image.new("L", (8, 8), 255)))  # the spy sees a decode that may happen
    assert decoded  # (load is called again by each conversion)


def test_blank_pictures_are_refused():
    ys, xs = np.mgrid[0:480, 0:640]
    noise = np.random.default_rng(1).normal(0, 1, (480, 640))
    page = 150 + 60 * xs / 640 + 25 * ys / 480  # a blank page photographed in uneven light
    photo, noisy = (np.clip(page + k * noise, 0, 255).astype(np.uint8) for k in (6, 16))
    blanks = {
        "white": _encode(Image.new("RGB", (280, 280), "white")),
        "black": _encode(Image.new("L", (280, 280), 0)),
        "grey": _encode(Image.new("L", (280, 280), 128)),
        "grey jpeg": _encode(Image.new("RGB", (280, 280), (120, 120, 120)), "JPEG"),
        "transparent": _encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0))),
        "photo of a blank page": _encode(Image.fromarray(photo), "JPEG", quality=75),
        "noisy photo": _encode(Image.fromarray(noisy), "JPEG", quality=75),  # blotches, no digit
        "faint": _encode(Image.fromarray(np.where(xs < 300, 200, 205).astype(np.uint8))),
    }
    for name, data in blanks.items():
        exc = _rejected(from_image_bytes, data)
        assert (exc.reason, exc.status) == ("blank_image", 422), name
    assert _rejected(to_mnist, np.zeros((28, 28))).reason == "blank_image"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_uploads_only_ever_raise_rejected(digits):
    rng = np.random.default_rng(0)
    for style in STYLES:
        data = render(digits[7], style)
        variants = [data[:cut] for cut in (1, 10, 60, len(data) - 5)]
        for _ in range(4):
            flipped = bytearray(data)
            for at in rng.integers(8, len(data), 6):
                flipped[at] ^= 0xFF
            variants.append(bytes(flipped))
        for variant in variants:
            try:
                out = from_image_bytes(variant)
            except Rejected as exc:
                assert exc.reason in {"not_an_image", "truncated_image", "blank_image"}
                assert exc.status in {400, 413, 422}
            else:
                assert out.dtype == np.uint8 and out.shape == (28, 28)


def test_to_mnist_refuses_what_is_not_a_grey_image():
    assert _rejected(to_mnist, np.zeros((2, 28, 28))).reason == "wrong_shape"
    assert _rejected(to_mnist, np.zeros((0, 5))).reason == "wrong_shape"
    assert _rejected(to_mnist, np.full((28, 28), np.nan)).reason == "not_finite"


def test_rejected_survives_pickling():
    exc = pickle.loads(pickle.dumps(Rejected("too_large", "send less")))
    assert (exc.reason, exc.status, str(exc)) == ("too_large", 413, "send less")


# --- data URLs ----------------------------------------------------------------------------------


def test_a_canvas_data_url_round_trips(digits):
    png = render(digits[8], "canvas_png")
    url = data_url(png)
    assert np.array_equal(from_data_url(url), from_image_bytes(png))
    wrapped = url[:40] + "\n" + url[40:90] + " \r\n" + url[90:]  # MIME line breaks are tolerated
    assert np.array_equal(from_data_url(wrapped), from_image_bytes(png))
    unpadded = url.rstrip("=")
    assert np.array_equal(from_data_url(unpadded), from_image_bytes(png))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("hello", "bad_data_url"),
        (b"data:image/png;base64,AAAA", "bad_data_url"),
        ("http://example.com/digit.png", "bad_data_url"),
        ("data:image/png;base64", "bad_data_url"),  # no comma, no payload
        ("data:text/plain;base64,aGVsbG8=", "bad_data_url"),
        ("data:image/png,%89PNG", "bad_data_url"),  # not base64
        ("data:image/png;base64,@@@not base64!!", "bad_data_url"),
        ("data:image/png;base64,A", "bad_data_url"),  # cut short
        ("data:image/png;base64,aGVsbG8=", "not_an_image"),  # valid base64 of "hello"
        ("data:image/png;base64,", "empty_body"),
    ],
)
def test_bad_data_urls_are_refused(url, reason):
    exc = _rejected(from_data_url, url)
    assert (exc.reason, exc.status) == (reason, 400)
    if reason == "bad_data_url":
        assert "data:image/png;base64," in exc.message or "base64" in exc.message


def test_an_absurdly_long_data_url_is_refused_before_decoding(monkeypatch):
    decoded = []  # base64 decoding, watched: the length check must come before it
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: decoded.append(a) or b"")
    url = "data:image/png;base64," + "A" * 8_000_000
    exc = _rejected(from_data_url, url)
    assert (exc.reason, exc.status) == ("too_large", 413)
    assert decoded == []
    monkeypatch.undo()
    small = Limits(max_bytes=300)
    assert _rejected(from_data_url, data_url(bytes(400)), small).reason == "too_large"


# --- pixel arrays -------------------------------------------------------------------------------


def test_pixels_accepts_one_image_or_a_batch(digits):
    x = digits[:3]
    assert np.array_equal(pixels(x[0].tolist()), x[:1])
    assert np.array_equal(pixels(x), x)
    assert np.array_equal(pixels(x[0][:, :, None]), x[:1])
    assert np.array_equal(pixels(x[:2, :, :, None].tolist()), x[:2])
    out = pixels(x.astype(np.float64) / 255, scale="0-1")
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28) and np.array_equal(out, x)


def test_pixels_rounds_fractions_half_up():
    image = np.zeros((28, 28))
    image[0, :4] = [127.5, 0.4, 254.6, 2.5]
    assert pixels(image)[0, 0, :4].tolist() == [128, 0, 255, 3]
    image = np.zeros((28, 28))
    image[0, :3] = [0.5, 1.0, 0.001]
    assert pixels(image.tolist(), scale="0-1")[0, 0, :3].tolist() == [128, 255, 0]


@pytest.mark.parametrize(
    ("values", "scale", "reason", "says"),
    [
        (np.zeros((27, 28)), "0-255", "wrong_shape", "(27, 28)"),
        (np.zeros(28), "0-255", "wrong_shape", "28×28"),
        (np.zeros((28, 28, 3)), "0-255", "wrong_shape", "(28, 28, 3)"),
        (np.zeros((2, 3, 28, 28)), "0-255", "wrong_shape", "(n, 28, 28)"),
        (np.zeros((0, 28, 28)), "0-255", "wrong_shape", "empty"),
        (5, "0-255", "wrong_shape", "()"),
        (np.full((28, 28), np.nan), "0-255", "not_finite", "NaN"),
        (np.full((28, 28), np.inf), "0-1", "not_finite", "finite"),
        (np.full((28, 28), -1.0), "0-255", "out_of_range", "min -1"),
        (np.full((28, 28), 256), "0-255", "out_of_range", "0..255"),
        (np.full((28, 28), 1.5), "0-1", "out_of_range", "'0-255'"),
        ([["1"] * 28] * 28, "0-255", "not_numbers", "strings"),
        ("not pixels", "0-255", "not_numbers", "string"),
        ([[None] * 28] * 28, "0-255", "not_numbers", "null"),
        ([[True] * 28] * 28, "0-255", "not_numbers", "booleans"),
        ([[0] * 28] * 27 + [[0] * 27], "0-255", "not_numbers", "different lengths"),
        (np.zeros((28, 28)), "percent", "bad_scale", "'0-255' or '0-1'"),
    ],
)
def test_pixels_refuses_what_it_cannot_use(values, scale, reason, says):
    exc = _rejected(pixels, values, scale=scale)
    assert (exc.reason, exc.status) == (reason, 400)
    assert says in exc.message
