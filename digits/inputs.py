"""Files and folders → the 28×28 uint8 digits the model takes, one `Item` per image.

Pictures are decoded with the service's own `from_image_bytes` and `Limits`, so a file scored
here is made MNIST-like exactly as `/predict_image` makes it. Arrays are taken as MNIST pixels, as
`/predict_npy` takes them: a `.npy` of one 28×28 or of n (read with the service's `load_npy`, but
not capped at its batch limit: big arrays are batched later), every image-shaped array of an
`.npz`, and IDX files (`*-idx3-ubyte`, optionally gzipped; MNIST's own format). A file that
cannot be read becomes an `Item` with a reason, never an exception out of the walk.

Labels come with the data where it has them: a parent folder named `0`..`9`, an IDX1 file beside
the IDX3 one, a `y_*` (or `labels`) array beside the images in an `.npz`.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from common.image import SHAPE, SIDE
from service.inputs.arrays import load_npy, pixels
from service.inputs.limits import DEFAULT_LIMITS, Limits
from service.inputs.pictures import FORMATS, from_image_bytes
from service.refusals import Rejected

# What a folder walk picks up by name; a file named on the command line is always tried.
PICTURE_SUFFIXES = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS
)
IDX_IMAGES = re.compile(r"idx3-ubyte(\.gz)?$", re.IGNORECASE)
IDX_LABELS = re.compile(r"idx1-ubyte(\.gz)?$", re.IGNORECASE)
MAX_ARRAY_BYTES = 1 << 30  # an array file (or one .npz member), decompressed: ~1.3 M digits
IDX_UBYTE = 0x08
POOL_FROM = 64  # pictures to decode before a pool of processes pays for its start (~1 s)
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}

Input = np.ndarray | Image.Image | str | os.PathLike | bytes | bytearray
Inputs = Input | Sequence[Input]


class Unreadable(ValueError):
    """A file (or an array in it) that gives no digit: `reason` is a short code, the message
    says what is wrong. Reasons from the service's decoders keep the service's codes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True, eq=False)
class Item:
    """One image found: its name (the path, plus `[i]` or `:key[i]` inside an array file), the
    28×28 the model sees, or why there is none; and its label when the data carries one."""

    name: str
    path: Path
    pixels: np.ndarray | None = None
    reason: str | None = None
    message: str | None = None
    label: int | None = None
    part: str = ""  # where in the file: "" for a picture, "[3]", ":x_test[3]"

    @property
    def ok(self) -> bool:
        return self.pixels is not None


@dataclass(frozen=True)
class Found:
    """A file to read: its path as the user gave it (or under the folder they gave), and kind."""

    path: Path
    kind: str  # "picture", "npy", "npz", "idx"


def service_limits() -> Limits:
    """The service's picture limits, from the same DIGIT_* variables it reads."""
    from service.settings import Settings

    return Settings.from_env().limits


def kind_of(path: Path) -> str | None:
    """What a file is by its name; None for what a folder walk skips (labels, notes, ...)."""
    name = path.name
    if IDX_IMAGES.search(name):
        return "idx"
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return suffix[1:]
    return "picture" if suffix in PICTURE_SUFFIXES else None


def find(paths: Iterable[str | Path]) -> tuple[list[Found], list[Item], int]:
    """The files under `paths` (folders walked recursively, in name order), the paths that do not
    exist (as failed items), and how many files a walk skipped by their name."""
    found, missing, skipped = [], [], 0
    for given in map(Path, paths):
        if given.is_dir():
            under = [Path(folder, name) for folder, _, files in os.walk(given) for name in files]
            for path in sorted(under, key=lambda p: p.parts):
                kind = kind_of(path)
                if kind is not None and not path.name.startswith("."):
                    found.append(Found(path, kind))
                elif not IDX_LABELS.search(path.name):
                    skipped += 1
        elif given.is_file():
            found.append(Found(given, kind_of(given) or "picture"))
        else:
            missing.append(_failed(given, Unreadable("not_found", "no such file or folder")))
    return found, missing, skipped


def walk(
    paths: Iterable[str | Path], limits: Limits = DEFAULT_LIMITS, jobs: int = 1
) -> tuple[Iterator[Item], int, int]:
    """Every image under `paths`, in order: (items, files found, files skipped by name).

    With `jobs` > 1 and enough pictures, pictures decode in that many processes (spawned, so a
    model already loaded here is not forked); order is kept either way.
    """
    found, missing, skipped = find(paths)
    return _items(found, missing, limits, jobs), len(found) + len(missing), skipped


def _items(found: list[Found], missing: list[Item], limits: Limits, jobs: int) -> Iterator[Item]:
    yield from missing
    pictures = sum(f.kind == "picture" for f in found)
    if jobs <= 1 or pictures < POOL_FROM:
        for f in found:
            yield from read(f, limits)
        return
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        todo = [f for f in found if f.kind == "picture"]
        decoded = pool.map(read, todo, [limits] * len(todo), chunksize=16)
        for f in found:
            yield from next(decoded) if f.kind == "picture" else read(f, limits)


def read(found: Found, limits: Limits = DEFAULT_LIMITS) -> list[Item]:
    """The images in one file, or one failed item saying why there are none."""
    path = found.path
    try:
        if found.kind == "picture":
            return [_picture(path, limits)]
        if found.kind == "npy":
            return _batch_items(path, "", *_npy(path))
        if found.kind == "npz":
            return _npz(path)
        return _batch_items(path, "", _idx(path, IDX_UBYTE, 3), False, idx_labels(path))
    except (Unreadable, Rejected) as exc:
        return [_failed(path, exc)]
    except OSError as exc:
        return [_failed(path, Unreadable("unreadable", exc.strerror or str(exc)))]
    except Exception as exc:  # a walk over someone's folder must not stop at one odd file
        return [_failed(path, Unreadable("unreadable", f"{type(exc).__name__}: {exc}"))]


def _failed(path: Path, exc: Unreadable | Rejected) -> Item:
    return Item(str(path), path, reason=exc.reason, message=exc.message)


def _picture(path: Path, limits: Limits) -> Item:
    size = path.stat().st_size
    if size > limits.max_bytes:  # refused before it is read, as the service refuses the upload
        raise Unreadable(
            "too_large",
            f"image is {size:,} bytes; the limit is {limits.max_bytes:,} bytes "
            "(DIGIT_MAX_UPLOAD_BYTES); send a smaller or more compressed picture",
        )
    seen = from_image_bytes(path.read_bytes(), limits)
    return Item(str(path), path, seen, label=folder_label(path))


def folder_label(path: Path) -> int | None:
    """The digit a parent folder named `0`..`9` gives a picture (how people sort their digits)."""
    name = path.parent.name
    return int(name) if len(name) == 1 and name.isdigit() else None


def _read_capped(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_ARRAY_BYTES:
        raise Unreadable("too_large", f"{size:,} bytes; at most {MAX_ARRAY_BYTES:,} per file")
    return path.read_bytes()


def _npy(path: Path) -> tuple[np.ndarray, bool]:
    """np.save() bytes → uint8 (n, 28, 28), checked as /predict_npy checks them but for any n;
    and whether it held one 2-D image."""
    data = _read_capped(path)
    array = load_npy(data, max_batch=len(data) // (SIDE * SIDE) + 1)
    return pixels(array), array.ndim == 2


def _image_shaped(array: np.ndarray) -> bool:
    shape = array.shape
    if array.ndim == 4 and shape[-1] == 1:
        shape = shape[:-1]
    return shape[-2:] == SHAPE and len(shape) in (2, 3)


def _npz(path: Path) -> list[Item]:
    """Every image-shaped array of an .npz (archive order), each with the labels beside it: the
    array named like it with `x` → `y` (`x_test` → `y_test`) or `images` → `labels`."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if member.file_size > MAX_ARRAY_BYTES:
                raise Unreadable("too_large", f"{member.filename} holds {member.file_size:,} bytes")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    items = []
    for key, array in arrays.items():
        if not _image_shaped(array):
            continue
        part = f":{key}"
        if array.dtype != np.uint8:
            items.append(
                Item(
                    f"{path}{part}",
                    path,
                    reason="wrong_dtype",
                    message=f"{key} is {array.dtype}; arrays must be uint8 0-255 "
                    "(x.astype(np.uint8))",
                    part=part,
                )
            )
            continue
        labels = arrays.get(_labels_key(key, arrays))
        items += _batch_items(path, part, pixels(array), array.ndim == 2, labels)
    if not items:
        raise Unreadable("no_images", "no uint8 array of 28×28 images (n, 28, 28) in it")
    return items


def _labels_key(key: str, arrays: dict[str, np.ndarray]) -> str | None:
    for candidate in (re.sub(r"^x", "y", key), key.replace("images", "labels")):
        if candidate != key and candidate in arrays:
            return candidate
    return None


def _batch_items(
    path: Path, part: str, images: np.ndarray, single: bool, labels: np.ndarray | None = None
) -> list[Item]:
    """One item per image of a (n, 28, 28) batch, `[i]` in its name unless the file held one 2-D
    image; labels (n,) that are not digits 0-9 for every image are ignored."""
    if labels is not None:
        labels = np.asarray(labels)
        fits = labels.shape == (len(images),) and labels.dtype.kind in "iu"
        labels = labels if fits and ((labels >= 0) & (labels <= 9)).all() else None
    items = []
    for i, image in enumerate(images):
        where = part if single else f"{part}[{i}]"
        label = int(labels[i]) if labels is not None else None
        items.append(Item(f"{path}{where}", path, image, label=label, part=where))
    return items


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def _idx(path: Path, dtype: int, ndim: int) -> np.ndarray:
    """An IDX file (MNIST's format: a big-endian header, then the bytes) → its uint8 array;
    images must be (n, 28, 28). The header is read first, so only what it declares is read."""
    with _open(path) as stream:
        head = stream.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != dtype or head[3] != ndim:
            raise Unreadable(
                "not_idx",
                f"not an IDX file of unsigned bytes with {ndim} dimensions (magic "
                f"{head.hex() or 'missing'}; want 0000{dtype:02x}{ndim:02x})",
            )
        shape = tuple(int(n) for n in np.frombuffer(stream.read(4 * ndim), ">u4"))
        if len(shape) != ndim:
            raise Unreadable("not_idx", "the IDX header ends early")
        if ndim == 3 and shape[1:] != SHAPE:
            raise Unreadable("wrong_shape", f"IDX images are {shape[1]}×{shape[2]}, not 28×28")
        size = int(np.prod(shape))
        if size > MAX_ARRAY_BYTES:
            raise Unreadable(
                "too_large", f"the IDX header declares {shape}: over {MAX_ARRAY_BYTES:,} bytes"
            )
        data = stream.read(size)
        if len(data) != size or stream.read(1):
            raise Unreadable(
                "not_idx",
                f"the header declares {shape} ({size:,} bytes) but the file holds "
                f"{'fewer' if len(data) != size else 'more'}",
            )
    return np.frombuffer(data, np.uint8).reshape(shape)


def idx_labels(images: Path) -> np.ndarray | None:
    """The IDX1 labels beside an IDX3 images file (`t10k-images-idx3-ubyte` →
    `t10k-labels-idx1-ubyte`, gzipped or not), or None when there is none (or it is unreadable)."""
    stem = IDX_IMAGES.sub("", images.name).replace("images", "labels")
    for name in (f"{stem}idx1-ubyte", f"{stem}idx1-ubyte.gz"):
        candidate = images.with_name(name)
        if candidate.is_file():
            try:
                return _idx(candidate, IDX_UBYTE, 1)
            except (Unreadable, OSError, EOFError):
                return None
    return None


def as_images(inputs: Inputs, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """What `Model.predict` takes → uint8 (n, 28, 28): arrays (and nested lists) are MNIST pixels,
    checked as /predict checks them; PIL images, picture bytes and files are decoded as
    /predict_image decodes them; a list of these is concatenated. `Unreadable` says why not."""
    try:
        return np.concatenate([_one(x, limits) for x in _each(inputs)])
    except Rejected as exc:
        raise Unreadable(exc.reason, exc.message) from exc


def _one(x: Input, limits: Limits) -> np.ndarray:
    if isinstance(x, Image.Image):
        return from_image_bytes(_encoded(x), limits)[None]
    if isinstance(x, bytes | bytearray):
        return from_image_bytes(bytes(x), limits)[None]
    if isinstance(x, str | os.PathLike):
        path = Path(x)
        items = read(Found(path, kind_of(path) or "picture"), limits)
        for item in items:
            if not item.ok:
                raise Unreadable(item.reason, f"{item.name}: {item.message}")
        return np.stack([item.pixels for item in items])
    return pixels(x)


def _each(inputs: Inputs) -> list:
    """A list of inputs, or one input (an array, even one written as nested lists)."""
    one = (np.ndarray, Image.Image, str, os.PathLike, bytes, bytearray)
    if isinstance(inputs, list | tuple) and inputs and all(isinstance(x, one) for x in inputs):
        return list(inputs)
    return [inputs]


def _encoded(image: Image.Image) -> bytes:
    """A PIL image as lossless file bytes (upright), so it is decoded as an upload would be."""
    image = ImageOps.exif_transpose(image)
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if image.mode in _PNG_MODES else "TIFF")
    return buffer.getvalue()
