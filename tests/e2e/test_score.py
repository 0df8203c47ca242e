"""`digit-mlops score` on a folder of real digits, in process and against the served fixture model.

One folder holds the fixture's test digits in the 12 upload styles people send (tests/uploads.py),
sorted into label folders, a blank and a broken picture, a .npy batch larger than the server's
batch limit, an .npz and a gzipped IDX pair with their labels, and a file that is no digit at all.
The CLI runs once in process (the packaged champion loaded here) and once with `--url` (pictures
decoded locally, sent to /predict_npy); both must give the server's own /predict_image answers.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from digits.client import Client, Refused
from tests.helpers import BIN, FIXTURE, SERVICE_LIMITS, run
from tests.uploads import STYLES, data_url, render

pytestmark = pytest.mark.e2e
SUFFIX = {"tiff": ".tif", "gif": ".gif", "webp": ".webp", "bmp": ".bmp", "jpeg": ".jpg"}
PICTURES = 24  # two of each upload style
ARRAY = SERVICE_LIMITS["DIGIT_MAX_BATCH"] + 6  # more than one request may carry
# Both sides round probabilities to 6 decimals; a float difference far below that can still fall
# on either side of a rounding edge, so two answers may differ by one unit of the last decimal.
ONE_UNIT = 1e-6 * (1 + 1e-6)


def suffix(style: str) -> str:
    return next((s for key, s in SUFFIX.items() if key in style), ".png")


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score")
    folder = root / "in"
    with np.load(FIXTURE) as f:
        x, y = f["x_test"], f["y_test"]
    for i in range(PICTURES):
        style = STYLES[i % len(STYLES)]
        path = folder / str(y[i]) / f"{i:02d}-{style}{suffix(style)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(x[i], style, seed=i))
    (folder / "bad").mkdir()
    blank = io.BytesIO()
    Image.new("L", (120, 120), 250).save(blank, "PNG")
    (folder / "bad" / "blank.png").write_bytes(blank.getvalue())
    (folder / "bad" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "bad" / "notes.txt").write_text("no digit here")
    arrays = folder / "arrays"
    arrays.mkdir()
    np.save(arrays / "batch.npy", x[30 : 30 + ARRAY])
    np.savez(arrays / "set.npz", x_test=x[100:110], y_test=y[100:110])
    (arrays / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(x[110:120])))
    (arrays / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(y[110:120])))
    return folder


def score(served: dict, cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = run([str(BIN / "digit-mlops"), "score", *args], cwd, served["env"], check=False)
    return proc.returncode, proc.stdout, proc.stderr


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def probs(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row[f"p{d}"]) for d in range(10)])


@pytest.fixture(scope="module")
def local(served, digits_folder) -> dict:
    """The in-process run: CSV with labels and the 28×28s seen."""
    cwd = digits_folder.parent
    code, out, err = score(served, cwd, "in", "--out", "local.csv", "--labels", "--seen", "seen")
    return {"code": code, "report": out, "stderr": err, "rows": rows(cwd / "local.csv"), "cwd": cwd}


@pytest.fixture(scope="module")
def remote(served, digits_folder) -> dict:
    cwd = digits_folder.parent
    code, out, err = score(served, cwd, "in", "--out", "remote.csv", "--url", served["url"])
    return {"code": code, "report": out, "stderr": err, "rows": rows(cwd / "remote.csv")}


def test_every_image_is_scored_and_every_bad_file_listed_with_its_reason(served, local):
    expected = PICTURES + ARRAY + 10 + 10
    assert len(local["rows"]) == expected, local["stderr"][-2000:]
    assert local["code"] == 1  # two files gave no digit
    report = local["report"]
    assert f"scored {expected} images from {PICTURES + 2 + 3} files" in report
    assert "failed: 2 images gave no digit" in report
    assert re.search(r"in/bad/blank\.png: blank_image: no digit found", report)
    assert re.search(r"in/bad/broken\.jpg: (not_an_image|truncated_image): ", report)
    assert "skipped 1 file " in report  # notes.txt; the IDX labels file is no "skipped" file
    versions = {row["model_version"] for row in local["rows"].values()}
    assert versions == {requests.get(f"{served['url']}/model", timeout=10).json()["version"]}


def test_in_process_and_the_service_give_the_same_answers(local, remote):
    assert remote["code"] == 1
    assert list(remote["rows"]) == list(local["rows"])  # same images, same order
    for name, mine in local["rows"].items():
        theirs = remote["rows"][name]
        assert mine["digit"] == theirs["digit"], name
        np.testing.assert_allclose(probs(mine), probs(theirs), rtol=0, atol=ONE_UNIT)


def test_pictures_score_as_predict_image_answers_them(served, local, digits_folder):
    pictures = [p for p in sorted(digits_folder.glob("[0-9]/*")) if p.is_file()]
    assert len(pictures) == PICTURES
    for path in pictures:
        reply = requests.post(
            f"{served['url']}/predict_image", files={"image": (path.name, path.read_bytes())}
        ).json()
        row = local["rows"][f"in/{path.relative_to(digits_folder)}"]
        assert int(row["digit"]) == reply["digit"], path.name
        np.testing.assert_allclose(probs(row), reply["probabilities"], rtol=0, atol=ONE_UNIT)
        seen = np.asarray(Image.open(local["cwd"] / row["seen"]))
        np.testing.assert_array_equal(seen, np.array(reply["seen"], np.uint8))


def test_arrays_score_as_predict_npy_answers_them(served, local):
    with np.load(FIXTURE) as f:
        x = f["x_test"][30 : 30 + SERVICE_LIMITS["DIGIT_MAX_BATCH"]]
    buffer = io.BytesIO()
    np.save(buffer, x)
    reply = requests.post(
        f"{served['url']}/predict_npy", files={"array": ("x.npy", buffer.getvalue())}
    ).json()
    for i, answer in enumerate(reply["predictions"]):
        row = local["rows"][f"in/arrays/batch.npy[{i}]"]
        assert int(row["digit"]) == answer["digit"]
        np.testing.assert_allclose(probs(row), answer["probabilities"], rtol=0, atol=ONE_UNIT)


def test_the_evaluation_is_what_the_rows_say(local):
    with np.load(FIXTURE) as f:
        y = f["y_test"]
    scored = local["rows"]
    want = {f"in/arrays/set.npz:x_test[{i}]": y[100 + i] for i in range(10)}
    want |= {f"in/arrays/t10k-images-idx3-ubyte.gz[{i}]": y[110 + i] for i in range(10)}
    want |= {name: int(name.split("/")[1]) for name in scored if re.match(r"in/\d/", name)}
    labelled = {name: row for name, row in scored.items() if row["label"]}
    assert {name: int(row["label"]) for name, row in labelled.items()} == want
    assert all(row["label"] == "" for name, row in scored.items() if "batch.npy" in name)
    right = [row["correct"] == "true" for row in labelled.values()]
    assert right == [row["digit"] == row["label"] for row in labelled.values()]
    report = local["report"]
    accuracy = f"accuracy {sum(right) / len(right):.2%} ({sum(right)} of {len(right)} labelled"
    assert accuracy in report
    confusion = np.zeros((10, 10), int)
    for row in labelled.values():
        confusion[int(row["label"]), int(row["digit"])] += 1
    table = report.split("columns: predicted digit)\n")[1].splitlines()[1:11]
    assert [[int(c) for c in line.split()[1:]] for line in table] == confusion.tolist()
    wrong = sorted(
        (row for row in labelled.values() if row["correct"] == "false"),
        key=lambda row: -float(row["confidence"]),
    )[:10]
    listed = re.findall(r"^  (\S+): label \d, predicted \d", report, re.MULTILINE)
    assert listed == [row["file"] for row in wrong]


def test_json_lines_with_a_batch_over_the_servers_limit(served, digits_folder, local):
    cwd = digits_folder.parent
    batch = str(SERVICE_LIMITS["DIGIT_MAX_BATCH"] * 2)  # the server's 413 names its limit
    code, _, err = score(
        served, cwd, "in/arrays", "-o", "r.jsonl", "--url", served["url"], "--batch", batch
    )
    assert code == 0, err
    records = [json.loads(line) for line in (cwd / "r.jsonl").read_text().splitlines()]
    assert len(records) == ARRAY + 20
    for record in records:
        row = local["rows"][record["file"]]
        assert record["digit"] == int(row["digit"])
        np.testing.assert_allclose(record["probabilities"], probs(row), rtol=0, atol=ONE_UNIT)


def test_exit_status_says_what_happened(served, digits_folder):
    cwd = digits_folder.parent
    good = ["in/arrays/set.npz", "--url", served["url"]]
    assert score(served, cwd, *good)[0] == 0
    assert score(served, cwd, "in/nowhere.png", "--url", served["url"])[0] == 1
    (cwd / "labels.csv").write_text("name,digit\nx.png,1\n")
    code, _, err = score(served, cwd, *good, "--labels", "labels.csv")
    assert code == 2 and "`file` and `label` columns" in err
    code, _, err = score(served, cwd, *good[:1], "--url", "http://127.0.0.1:9")
    assert code == 2 and "is the service up" in err


def test_the_client_calls_every_endpoint(served, digits_folder):
    with np.load(FIXTURE) as f:
        x = f["x_test"][:3]
    picture = next(digits_folder.glob("*/*.png"))
    with Client(served["url"]) as client:
        one = client.predict(x[0])
        assert (
            one == requests.post(f"{served['url']}/predict", json={"image": x[0].tolist()}).json()
        )
        batch = client.predict_batch(x)
        assert [p["digit"] for p in batch["predictions"]] == [
            p["digit"] for p in client.predict_npy(x)["predictions"]
        ]
        assert batch["predictions"][0]["probabilities"] == one["probabilities"]
        image = client.predict_image(picture)
        canvas = client.predict_canvas(data_url(picture.read_bytes()))
        assert image == canvas
        assert client.explain(x[0])["digit"] == one["digit"]
        assert client.model()["version"] == one["model_version"]
        card = client.model_card()
        assert card == (served["dir"] / "docs/model-card.md").read_text()
        with pytest.raises(Refused) as refused:
            client.predict(x[0][:27])
        assert (refused.value.status, refused.value.reason) == (400, "wrong_shape")
