"""Rollouts on a running service, over real HTTP: a new champion swaps in under load with no
failed request, a broken one is refused, a rollback comes back, the challenger runs in the
shadow without touching a reply, the canary answers its share, and a stopping worker says so.

The tests share one server that follows copies of the fixture's stores (tests/rollout.py makes
new versions by re-registering the champion's logged model), in order: each starts from the
champion the one before left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from bench.closed_loop import Load
from bench.servers import running
from tests import rollout
from tests.helpers import FIXTURE, free_port, second_server_env, serve_cmd, serving
from tests.hostile.probe import metric

pytestmark = pytest.mark.e2e
JSON = {"Content-Type": "application/json"}
INTERVAL_S = "0.5"  # DIGIT_RELOAD_INTERVAL_S: the default 2 s, shortened for the tests
WORKERS = 2  # the default: each worker swaps on its own, and each is counted


@pytest.fixture(scope="module")
def stores(served, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rollout")
    env = {**rollout.copy_stores(served["env"], root), "DIGIT_RELOAD_INTERVAL_S": INTERVAL_S}
    return {"root": root, "env": env, "dir": served["dir"]}


@pytest.fixture(scope="module")
def live(stores) -> Iterator[str]:
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    with serving(cmd, stores["dir"], stores["env"], port, stores["root"] / "live.log") as url:
        yield url


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    with np.load(FIXTURE) as f:
        return f["x_test"][:30]


def body(image: np.ndarray) -> bytes:
    return json.dumps({"image": image.tolist()}).encode()


def predict(url: str, data: bytes, path: str = "/predict") -> requests.Response:
    return requests.post(f"{url}{path}", data=data, headers=JSON, timeout=10)


def wait_for(what, timeout_s: float = 60.0, every_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while not (value := what()):
        assert time.monotonic() < deadline, f"still not true after {timeout_s} s"
        time.sleep(every_s)
    return value


def served_version(url: str) -> str:
    return requests.get(f"{url}/model", timeout=10).json()["version"]


def test_a_new_champion_swaps_in_under_load_with_no_failed_request(live, stores, digits):
    env, old = stores["env"], served_version(live)
    with Load(live, body(digits[0]), connections=16) as load:
        time.sleep(1.5)
        new = rollout.register_copy(env, accuracy=0.999)
        assert rollout.settle(env) == new
        packaged = time.monotonic()
        rollout.package(stores["dir"], env)
        wait_for(lambda: metric(live, "digit_model_reloads_total", outcome="swapped") == WORKERS)
        switched = time.monotonic()
        time.sleep(1.5)  # and then only the new one answers
    replies = load.replies
    assert load.failures() == []  # no non-2xx, no connection error
    assert {r.version for r in replies} == {old, new}
    assert all(r.header == r.version for r in replies)  # no reply mixes the two
    assert {r.version for r in replies if r.started > switched} == {new}
    during = [r for r in replies if packaged <= r.started <= switched]
    assert during, "no request was answered during the swap"
    print(
        f"\n    swap: {len(replies)} replies, {len(during)} while packaging and swapping "
        f"(longest {max(r.seconds for r in during) * 1000:.0f} ms), "
        f"{Counter(r.version for r in replies)}"
    )
    assert served_version(live) == new
    assert metric(live, "digit_model_info", role="champion", model_version=new) == 1
    assert metric(live, "digit_model_info", role="champion", model_version=old) == 0
    assert metric(live, "digit_predictions_total", model_version=new) > 0


@pytest.mark.parametrize("how, outcome", [("unloadable", "load_failed"), ("wrong", "check_failed")])
def test_a_model_that_fails_to_load_or_to_check_is_not_swapped_in(
    live, stores, digits, how, outcome
):
    env, serving_now = stores["env"], requests.get(f"{live}/model", timeout=10).json()
    broken = rollout.pin_broken(env, how, "99", serving_now["bento_tag"])
    wait_for(lambda: metric(live, "digit_model_reloads_total", outcome=outcome) == WORKERS)
    for image in digits[:10]:
        r = predict(live, body(image))
        assert r.status_code == 200 and r.json()["model_version"] == serving_now["version"]
    assert requests.get(f"{live}/model", timeout=10).json()["bento_tag"] == serving_now["bento_tag"]
    assert metric(live, "digit_model_info", model_version="99") == 0
    assert broken.endswith("-99")
    # `make package` puts :latest back on the registry's champion; the service already serves it
    assert "again" in rollout.package(stores["dir"], env)
    time.sleep(2 * float(INTERVAL_S))
    assert metric(live, "digit_model_reloads_total", outcome="swapped") == WORKERS


def test_rollback_brings_the_previous_champion_back_to_the_running_service(live, stores):
    env, now = stores["env"], served_version(live)
    out = rollout.champion_cli(stores["dir"], env, "rollback", "--reason", "the test said so")
    assert f"v{now} retired" in out
    previous = re.search(r"champion is v(\d+) again", out).group(1)
    assert previous != now
    wait_for(lambda: metric(live, "digit_model_reloads_total", outcome="swapped") == 2 * WORKERS)
    assert served_version(live) == previous
    r = predict(live, body(np.zeros((28, 28), np.uint8)))
    assert r.json()["model_version"] == r.headers["X-Model-Version"] == previous


@pytest.fixture(scope="module")
def challenger(stores, live) -> str:
    """A challenger beside the champion (below it, so the gate keeps the champion)."""
    env = stores["env"]
    champion = served_version(live)
    version = rollout.register_copy(env, accuracy=0.51)
    assert rollout.settle(env) == champion
    assert "challenger is" in rollout.package(stores["dir"], env)
    return version


def other_server(stores: dict, name: str, **settings: str):
    env = {**second_server_env(stores["env"], stores["root"] / f"home-{name}"), **settings}
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    return serving(cmd, stores["dir"], env, port, stores["root"] / f"{name}.log")


def test_the_shadow_never_changes_a_reply_and_counts_every_shadowed_image(
    live, stores, challenger, digits
):
    with other_server(stores, "shadow", DIGIT_SHADOW_SHARE="1") as shadowed:
        info = requests.get(f"{shadowed}/model", timeout=10).json()
        assert info["rollout"]["challenger_version"] == challenger
        assert info["version"] == served_version(live)
        for image in digits:
            on = predict(shadowed, body(image))
            off = predict(live, body(image))
            assert on.status_code == off.status_code == 200
            assert on.content == off.content  # byte for byte
        batch = json.dumps({"images": digits[:5].tolist()})
        on = predict(shadowed, batch, "/predict_batch")
        assert on.content == predict(live, batch, "/predict_batch").content
        shadowed_images = len(digits) + 5
        comparisons = "digit_shadow_comparisons_total"
        wait_for(lambda: metric(shadowed, comparisons) >= shadowed_images, timeout_s=20)
        time.sleep(0.5)
        assert metric(shadowed, comparisons) == shadowed_images  # exactly one per image
        # the challenger is the champion's weights under another version: it agrees on all
        assert metric(shadowed, comparisons, agree="yes", challenger_version=challenger) == (
            shadowed_images
        )
        assert metric(shadowed, "digit_shadow_skipped_total") == 0
        assert metric(shadowed, "digit_shadow_inference_seconds_count") >= 1
    assert metric(live, comparisons) == 0  # shadow off: nothing runs


@pytest.fixture(scope="module")
def canary(stores, challenger) -> Iterator[tuple[str, object]]:
    """A server answering half of the requests with the challenger, draining 3 s on SIGTERM."""
    env = {
        **second_server_env(stores["env"], stores["root"] / "home-canary"),
        "DIGIT_CANARY_SHARE": "0.5",
        "DIGIT_DRAIN_S": "3",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = serve_cmd("service.service:DigitClassifier", port)
    log = stores["root"] / "canary.log"
    with running("bentoml", cmd, f"{url}/readyz", cwd=stores["dir"], log=log, env=env) as proc:
        yield url, proc


def test_the_canary_answers_its_share_and_says_so(canary, challenger, digits):
    url, _ = canary
    champion = served_version(url)
    versions = Counter()
    for image in np.concatenate([digits, digits]):
        r = predict(url, body(image))
        version = r.json()["model_version"]
        assert r.status_code == 200 and r.headers["X-Model-Version"] == version
        versions[version] += 1
    assert set(versions) == {champion, challenger}  # 60 tosses of a fair coin
    for version, count in versions.items():
        assert metric(url, "digit_predictions_total", model_version=version) == count
    assert metric(url, "digit_model_info", role="challenger", model_version=challenger) == 1


def test_a_stopping_server_turns_not_ready_and_still_answers_while_it_drains(canary, digits):
    url, proc = canary
    session = requests.Session()  # kept-alive connections, opened before the signal
    assert session.get(f"{url}/readyz", timeout=10).status_code == 200
    assert session.get(f"{url}/livez", timeout=10).status_code == 200
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert session.get(f"{url}/readyz", timeout=10).status_code == 503
    r = session.post(f"{url}/predict", data=body(digits[0]), headers=JSON, timeout=10)
    assert r.status_code == 200  # in the drain: out of rotation, still answering
    proc.wait(timeout=30)
