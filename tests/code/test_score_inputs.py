"""digits/inputs.py and digits/labels.py: what `digit-mlops score` reads from files and folders.

Every picture must come back exactly as the service's own decoder makes it (the CLI and
/predict_image must agree), arrays as the pixels they hold, and every bad file as a failed item
with a reason, never an exception. Fixture files are built in tmp dirs from real MNIST digits.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digits.inputs import POOL_FROM, Found, Unreadable, as_images, find, read, walk
from digits.labels import LabelsError, labeller
from service.inputs.limits import DEFAULT_LIMITS, Limits
from service.inputs.pictures import from_image_bytes
from tests.helpers import FIXTURE

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tif": "TIFF"}


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    with np.load(FIXTURE) as f:
        return f["x_test"], f["y_test"]


def picture(x28: np.ndarray, fmt: str = "PNG") -> bytes:
    """A digit as people photograph one: dark ink on light paper, 4× larger."""
    image = Image.fromarray(255 - np.kron(x28, np.ones((4, 4), np.uint8)))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def items_of(path: Path, limits: Limits = DEFAULT_LIMITS) -> list:
    stream, _, _ = walk([path], limits)
    return list(stream)


def idx_bytes(array: np.ndarray) -> bytes:
    """MNIST's IDX format: zero, zero, type 0x08 (ubyte), ndim, big-endian sizes, the bytes."""
    return (
        bytes([0, 0, 8, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + (array.astype(np.uint8).tobytes())
    )


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_picture_is_decoded_exactly_as_the_service_decodes_it(tmp_path, mnist, suffix):
    x, _ = mnist
    data = picture(x[3], FORMATS[suffix])
    path = tmp_path / f"digit.{suffix}"
    path.write_bytes(data)
    [item] = items_of(path)
    assert item.ok and item.name == str(path) and item.part == ""
    np.testing.assert_array_equal(item.pixels, from_image_bytes(data, DEFAULT_LIMITS))


def test_a_npy_of_one_image_and_of_many(tmp_path, mnist):
    x, _ = mnist
    np.save(tmp_path / "one.npy", x[0])
    np.save(tmp_path / "many.npy", x[:5, :, :, None])  # (n, 28, 28, 1) too
    [one] = items_of(tmp_path / "one.npy")
    assert one.name == str(tmp_path / "one.npy")
    np.testing.assert_array_equal(one.pixels, x[0])
    many = items_of(tmp_path / "many.npy")
    assert [i.name for i in many] == [f"{tmp_path / 'many.npy'}[{k}]" for k in range(5)]
    np.testing.assert_array_equal(np.stack([i.pixels for i in many]), x[:5])


def test_a_npy_larger_than_the_services_batch_limit_is_read_whole(tmp_path, mnist):
    x, _ = mnist
    n = DEFAULT_LIMITS.max_batch + 100  # /predict_npy would refuse it; the CLI batches it
    np.save(tmp_path / "big.npy", np.tile(x, (n // len(x) + 1, 1, 1))[:n])
    assert len(items_of(tmp_path / "big.npy")) == n


def test_a_npy_that_is_not_uint8_digits_fails_with_the_services_reason(tmp_path, mnist):
    x, _ = mnist
    np.save(tmp_path / "float.npy", x[:2].astype(np.float32) / 255)
    np.save(tmp_path / "shape.npy", np.zeros((3, 32, 32), np.uint8))
    [dtype] = items_of(tmp_path / "float.npy")
    [shape] = items_of(tmp_path / "shape.npy")
    assert (dtype.ok, dtype.reason) == (False, "wrong_dtype")
    assert (shape.ok, shape.reason) == (False, "wrong_shape")


def test_a_npz_gives_every_image_array_with_the_labels_beside_it(tmp_path, mnist):
    x, y = mnist
    path = tmp_path / "set.npz"
    np.savez_compressed(path, x_test=x[:4], y_test=y[:4], images=x[4:6], other=np.arange(3))
    items = items_of(path)
    assert [i.part for i in items] == [f":x_test[{k}]" for k in range(4)] + [
        f":images[{k}]" for k in range(2)
    ]
    np.testing.assert_array_equal(np.stack([i.pixels for i in items]), x[:6])
    assert [i.label for i in items] == [*y[:4].tolist(), None, None]


def test_a_npz_without_images_or_with_float_images_fails(tmp_path, mnist):
    x, y = mnist
    np.savez(tmp_path / "labels.npz", y=y[:3])
    np.savez(tmp_path / "floats.npz", x=x[:3].astype(np.float64))
    [none] = items_of(tmp_path / "labels.npz")
    [floats] = items_of(tmp_path / "floats.npz")
    assert none.reason == "no_images"
    assert floats.reason == "wrong_dtype" and floats.part == ":x"


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_with_their_idx1_labels(tmp_path, mnist, gz):
    x, y = mnist
    suffix = ".gz" if gz else ""
    opener = gzip.compress if gz else bytes
    (tmp_path / f"t10k-images-idx3-ubyte{suffix}").write_bytes(opener(idx_bytes(x[:7])))
    (tmp_path / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(opener(idx_bytes(y[:7])))
    stream, files, skipped = walk([tmp_path])
    items = list(stream)
    assert (files, skipped) == (1, 0)  # the labels file is neither scored nor "skipped"
    np.testing.assert_array_equal(np.stack([i.pixels for i in items]), x[:7])
    assert [i.label for i in items] == y[:7].tolist()
    assert items[6].name.endswith(f"t10k-images-idx3-ubyte{suffix}[6]")


def test_idx_files_that_lie_about_their_contents_fail(tmp_path, mnist):
    x, _ = mnist
    cut = tmp_path / "cut-images-idx3-ubyte"
    cut.write_bytes(idx_bytes(x[:3])[:-10])
    wrong = tmp_path / "wrong-images-idx3-ubyte"
    wrong.write_bytes(idx_bytes(x[:3].astype(np.uint8)).replace(b"\0\0\x08\x03", b"\0\0\x0d\x03"))
    small = tmp_path / "small-images-idx3-ubyte"
    small.write_bytes(idx_bytes(np.zeros((2, 20, 20), np.uint8)))
    assert [items_of(p)[0].reason for p in (cut, wrong, small)] == [
        "not_idx",
        "not_idx",
        "wrong_shape",
    ]


def test_unreadable_and_blank_pictures_fail_with_their_reason(tmp_path, mnist):
    x, _ = mnist
    (tmp_path / "junk.png").write_bytes(b"this is not a picture")
    (tmp_path / "cut.png").write_bytes(picture(x[0])[:200])
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, "PNG")
    (tmp_path / "blank.png").write_bytes(blank.getvalue())
    (tmp_path / "whole.png").write_bytes(picture(x[0]))
    reasons = {Path(i.name).name: i.reason for i in items_of(tmp_path)}
    assert reasons == {
        "blank.png": "blank_image",
        "cut.png": "truncated_image",
        "junk.png": "not_an_image",
        "whole.png": None,
    }
    # over the service's upload limit: refused from its size, before it is read
    small = Limits(max_bytes=(tmp_path / "whole.png").stat().st_size - 1)
    [item] = items_of(tmp_path / "whole.png", small)
    assert item.reason == "too_large"


def test_a_missing_path_is_a_failed_item_not_an_exception(tmp_path):
    stream, files, _ = walk([tmp_path / "nowhere", tmp_path])
    [item] = list(stream)
    assert (files, item.reason, item.name) == (1, "not_found", str(tmp_path / "nowhere"))


def test_a_folder_is_walked_recursively_in_name_order_skipping_other_files(tmp_path, mnist):
    x, _ = mnist
    for rel in ("b/2.png", "a/z/1.png", "a/0.jpg", "c.npy"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "b/2.png").write_bytes(picture(x[2]))
    (tmp_path / "a/z/1.png").write_bytes(picture(x[1]))
    (tmp_path / "a/0.jpg").write_bytes(picture(x[0], "JPEG"))
    np.save(tmp_path / "c.npy", x[3])
    (tmp_path / "a/notes.txt").write_text("not a digit")
    (tmp_path / "b/.hidden.png").write_bytes(b"")
    found, missing, skipped = find([tmp_path])
    assert [f.path.relative_to(tmp_path).as_posix() for f in found] == [
        "a/0.jpg",
        "a/z/1.png",
        "b/2.png",
        "c.npy",
    ]
    assert (missing, skipped) == ([], 2)
    # a file named on the command line is always tried, whatever its name
    assert [f.kind for f in find([tmp_path / "a/notes.txt"])[0]] == ["picture"]


def test_many_pictures_decode_in_processes_in_the_same_order(tmp_path, mnist):
    x, _ = mnist
    n = POOL_FROM + 6
    for i in range(n):
        (tmp_path / f"{i:03d}.png").write_bytes(picture(x[i]))
    np.save(tmp_path / "050-between.npy", x[:2])  # an array among the pictures keeps its place
    one, _, _ = walk([tmp_path], jobs=1)
    two, _, _ = walk([tmp_path], jobs=2)
    one, two = list(one), list(two)
    assert [i.name for i in one] == [i.name for i in two] and len(one) == n + 2
    assert one[50].name.endswith("050-between.npy[0]")
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_labels_from_folder_names(tmp_path, mnist):
    x, y = mnist
    for i in range(3):
        (tmp_path / str(y[i])).mkdir(exist_ok=True)
        (tmp_path / str(y[i]) / f"{i}.png").write_bytes(picture(x[i]))
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "x.png").write_bytes(picture(x[3]))  # not a digit's folder
    labels = {Path(i.name).name: i.label for i in items_of(tmp_path)}
    assert labels == {"0.png": y[0], "1.png": y[1], "2.png": y[2], "x.png": None}


def test_labels_from_a_csv_relative_to_its_folder(tmp_path, mnist):
    x, _ = mnist
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.png").write_bytes(picture(x[0]))
    np.save(tmp_path / "mine" / "b.npy", x[1:3])
    (tmp_path / "mine" / "labels.csv").write_text("Label,File\n7,a.png\n3,b.npy[1]\n")
    label_of = labeller(tmp_path / "mine" / "labels.csv")
    labels = {i.name: label_of(i) for i in items_of(tmp_path / "mine")}
    here = tmp_path / "mine"
    assert labels == {
        str(here / "a.png"): 7,
        f"{here / 'b.npy'}[0]": None,
        f"{here / 'b.npy'}[1]": 3,
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [("name,digit\na.png,1\n", "`file` and `label`"), ("file,label\na.png,12\n", ":2: label")],
)
def test_a_labels_csv_that_cannot_be_used_says_why(tmp_path, text, why):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(LabelsError, match=why):
        labeller(tmp_path / "labels.csv")


def test_python_inputs_become_the_pixels_the_service_would_see(tmp_path, mnist):
    x, _ = mnist
    data = picture(x[5])
    (tmp_path / "d.png").write_bytes(data)
    want = from_image_bytes(data, DEFAULT_LIMITS)
    images = as_images([x[0], Image.open(io.BytesIO(data)), tmp_path / "d.png", data])
    np.testing.assert_array_equal(images, np.stack([x[0], want, want, want]))
    np.testing.assert_array_equal(as_images(x[:3].tolist()), x[:3])  # nested lists: pixels
    with pytest.raises(Unreadable) as err:
        as_images(np.zeros((2, 27, 28), np.uint8))
    assert err.value.reason == "wrong_shape"
    with pytest.raises(Unreadable, match="blank"):
        as_images(Image.new("L", (50, 50), 255))
    assert read(Found(tmp_path / "none.png", "picture"))[0].reason == "unreadable"
