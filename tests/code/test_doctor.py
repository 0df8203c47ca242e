"""`make doctor` (scripts/doctor.py) as the Makefile runs it, and a first install that never leaves
a half-made `.venv` (the Makefile's stamp recipe, in a temp copy, offline)."""

from __future__ import annotations

import ensurepip
import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, clean_env, free_port

SCRIPT = REPO / "scripts" / "doctor.py"
_spec = importlib.util.spec_from_file_location("doctor", SCRIPT)
doctor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doctor)

# What this machine is told in the tests that control /proc: enough of everything, or not.
CPUINFO = "".join(f"processor\t: {n}\nflags\t\t: fpu sse2 avx avx2 fma\n\n" for n in range(2))
CPUINFO_NO_AVX = CPUINFO.replace(" avx avx2 fma", " sse4_2")
MEMINFO = "MemTotal:       16384000 kB\nMemFree:         8000000 kB\nMemAvailable:   12000000 kB\n"
MEMINFO_SMALL = "MemTotal:        2048000 kB\nMemAvailable:    1024000 kB\n"


def run_doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The doctor on the test's Python 3.11, with this (installed) venv and ports nobody holds."""
    base = ["--venv", sys.prefix, "--installed", "--mlflow-port", str(free_port())]
    base += ["--prom-port", str(free_port())]
    if "--port" not in args:
        base += ["--port", str(free_port())]
    return subprocess.run(
        [sys.executable, str(SCRIPT), *base, *args],
        env=env or clean_env(PYTHONIOENCODING="utf-8"),
        capture_output=True,
        text=True,
        timeout=30,
    )


def fake_proc(tmp_path: Path, cpuinfo: str, meminfo: str) -> str:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text(cpuinfo)
    (proc / "meminfo").write_text(meminfo)
    return str(proc)


def test_a_busy_port_is_a_warning_that_names_its_holder_and_fix():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        started = time.monotonic()
        out = run_doctor("--port", str(port))
        took = time.monotonic() - started
        quiet = run_doctor("--port", str(port), "--quiet")
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if f"port {port} " in ln)
    assert line.lstrip().startswith("!") and "in use" in line, line
    assert f"pid {os.getpid()}" in line, line  # /proc tells who: this test
    assert re.search(rf"port {port}: PORT=\d+ make run$", out.stdout, re.M), out.stdout
    assert "free (make mlflow-ui)" in out.stdout and "free (make monitor)" in out.stdout
    assert took < 5, f"the doctor took {took:.1f} s"
    # --quiet (make run, make test): the problem and its fix, no line for what is fine
    assert quiet.returncode == 0
    assert "PORT=" in quiet.stdout and "✓" not in quiet.stdout, quiet.stdout


def test_a_machine_without_avx_fails_and_low_memory_warns(tmp_path):
    out = run_doctor("--proc", fake_proc(tmp_path, CPUINFO_NO_AVX, MEMINFO_SMALL))
    assert out.returncode == 1, out.stdout
    lines = {
        ln.split()[1]: ln for ln in out.stdout.splitlines() if ln.strip() and ln.split()[0] in "✓!✗"
    }
    assert lines["cpu"].lstrip().startswith("✗") and "2 CPUs, no AVX" in lines["cpu"]
    assert lines["memory"].lstrip().startswith("!") and "under 4 GiB" in lines["memory"]
    assert re.search(r"^\s+cpu: .*AVX", out.stdout, re.M)


def test_marks_fall_back_to_ascii_where_stdout_is_not_utf8(tmp_path):
    proc = fake_proc(tmp_path, CPUINFO_NO_AVX, MEMINFO)
    out = run_doctor("--proc", proc, env=clean_env(PYTHONIOENCODING="ascii"))
    assert out.returncode == 1 and out.stdout.isascii(), out.stdout
    assert re.search(r"^XX cpu ", out.stdout, re.M) and re.search(r"^ok memory ", out.stdout, re.M)


def test_all_well_is_silent_when_quiet(tmp_path):
    out = run_doctor("--quiet", "--proc", fake_proc(tmp_path, CPUINFO, MEMINFO))
    assert (out.returncode, out.stdout) == (0, ""), out.stdout


def test_json_lists_every_check(tmp_path):
    out = run_doctor("--json", "--proc", fake_proc(tmp_path, CPUINFO, MEMINFO))
    report = json.loads(out.stdout)
    names = [check["name"] for check in report["checks"]]
    assert names[:5] == ["python", "venv", "project venv", "disk", "index"]
    assert [n.split()[0] for n in names[5:8]] == ["port"] * 3
    assert names[8:] == ["cpu", "memory"]
    for check in report["checks"]:
        assert check["status"] in ("ok", "warn", "fail") and check["found"], check
        assert check["status"] == "ok" or check["fix"], check
    assert (
        report["ok"]
        == (out.returncode == 0)
        == all(c["status"] != "fail" for c in report["checks"])
    )
    cpu = next(c for c in report["checks"] if c["name"] == "cpu")
    assert cpu["found"] == "2 CPUs, avx2 fma"


def test_the_wrong_python_fails_with_the_python_fix():
    wrong = doctor.check_python((3, 9, 2), "/usr/bin/python3.9")
    assert wrong.status == "fail" and "3.9.2" in wrong.found
    assert "PYTHON=/path/to/python3.11" in wrong.fix and "python3.11-venv" in wrong.fix
    assert doctor.check_python((3, 12, 1), "python3.12").status == "fail"
    assert doctor.check_python((3, 11, 9), "python3.11").status == "ok"


def test_an_installed_venv_whose_python_is_gone_fails(tmp_path):
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.11")
    result = doctor.check_project_venv(venv, installed=True)
    assert result.status == "fail" and f"rm -rf {venv}" in result.fix
    assert doctor.check_project_venv(Path(sys.prefix), installed=True).status == "ok"


def test_disk_is_measured_where_the_venv_goes(tmp_path):
    venv = tmp_path / "clone" / ".venv"  # neither exists yet: the nearest folder that does counts
    free = shutil.disk_usage(tmp_path).free / doctor.GIB
    first = doctor.check_disk(venv, installed=False)
    assert f"GiB free in {tmp_path}" in first.found
    assert first.status == ("fail" if free < doctor.VENV_NEEDS_GB else "ok"), first.found
    assert doctor.check_disk(venv, installed=True).status == (
        "warn" if free < doctor.LOW_DISK_GB else "ok"
    )


# The index is probed only when .venv has to be installed, through pip's own configuration.
def pip_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """No pip configuration but what the test says (PIP_CONFIG_FILE=devnull skips every file)."""
    return {"HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path), **settings}


@pytest.fixture
def index_server():
    """A real HTTP server standing in for a package index."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()


def test_the_index_is_reachable_through_pip_settings(tmp_path, index_server):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    env = pip_env(
        tmp_path, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index_server, PIP_FIND_LINKS=str(wheels)
    )
    result = doctor.check_index(env, installed=False)
    assert result.status == "ok" and index_server in result.found and str(wheels) in result.found
    assert doctor.check_index(env, installed=True).found == "not needed: .venv is installed"


def test_an_unreachable_index_fails_without_showing_its_password(tmp_path):
    closed = free_port()
    env = pip_env(
        tmp_path, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"http://bob:s3cret@127.0.0.1:{closed}/"
    )
    started = time.monotonic()
    result = doctor.check_index(env, installed=False)
    assert time.monotonic() - started <= doctor.INDEX_TIMEOUT_S + 0.5
    assert result.status == "fail" and "PIP_INDEX_URL=" in result.fix
    assert "bob:***@127.0.0.1" in result.found and "s3cret" not in result.found
    none = doctor.check_index(
        pip_env(tmp_path, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1"), False
    )
    assert none.status == "fail" and "no package source" in none.found


def test_pip_config_files_are_honoured_install_over_global(tmp_path):
    mirror = tmp_path / "mirror" / "simple"
    mirror.mkdir(parents=True)
    closed = f"http://127.0.0.1:{free_port()}/simple"
    conf = tmp_path / "pip.conf"
    conf.write_text(
        f"[global]\nindex-url = {closed}\nextra-index-url = file:///nonexistent/simple\n"
        f"[install]\nextra_index_url = file://{mirror}\n"
    )
    result = doctor.check_index(pip_env(tmp_path, PIP_CONFIG_FILE=str(conf)), installed=False)
    assert result.status == "warn", result.found
    assert f"reachable: file://{mirror}" in result.found and f"not: {closed}" in result.found
    assert "/nonexistent" not in result.found  # [install] replaced [global]'s extra index


def test_the_cli_probes_the_index_only_before_the_install(tmp_path):
    env = clean_env(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path))
    args = ["--proc", fake_proc(tmp_path, CPUINFO, MEMINFO), "--json"]
    before = subprocess.run(
        [sys.executable, str(SCRIPT), "--venv", str(tmp_path / ".venv"), "--no-ports", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    index = next(c for c in json.loads(before.stdout)["checks"] if c["name"] == "index")
    assert index == {"name": "index", "status": "ok", "found": f"reachable: {tmp_path}", "fix": ""}


# The stamp recipe, for real, in a temp copy: the Makefile, the doctor and a tiny project whose
# build backend is a few lines (no setuptools or wheel to fetch), with pip offline (no index, an
# empty --find-links), so `pip install pip==25.3` or a lock naming a package nobody has fails.
BACKEND = """
import zipfile
from pathlib import Path

FILES = {
    "METADATA": "Metadata-Version: 2.1\\nName: probe\\nVersion: 0\\n",
    "WHEEL": "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    "RECORD": "",
}


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "probe-0-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / name, "w") as wheel:
        for file, text in FILES.items():
            wheel.writestr(f"probe-0.dist-info/{file}", text)
    return name


build_editable = build_wheel
"""
PYPROJECT = """[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "probe"
version = "0"
"""


def project_copy(root: Path, lock: str) -> Path:
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "Makefile", root / "Makefile")
    shutil.copy2(SCRIPT, root / "scripts" / "doctor.py")
    (root / "backend.py").write_text(BACKEND)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "requirements.lock").write_text(lock)
    (root / "wheels").mkdir()
    return root


def make_venv(root: Path, *variables: str) -> subprocess.Popen:
    env = clean_env(
        PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(root / "wheels")
    )
    cmd = ["make", "--no-print-directory", "venv", f"PYTHON={sys.executable}", *variables]
    return subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_failed_first_install_leaves_no_venv_and_a_leftover_is_rebuilt(tmp_path):
    # Side by side (each mostly waits on ensurepip): a first install that fails midway, and one
    # that starts on a half-made .venv (its python a dangling link, no stamp) with a good lock.
    failing = project_copy(tmp_path / "failing", "no-such-package-digit-mlops==1.0\n")
    good = project_copy(tmp_path / "good", "# nothing to install\n")
    (good / ".venv" / "bin").mkdir(parents=True)
    (good / ".venv" / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.11")
    runs = [make_venv(failing), make_venv(good, f"PIP_VERSION={ensurepip.version()}")]
    (failed_out, _), (good_out, _) = (r.communicate(timeout=300) for r in runs)
    assert runs[0].returncode != 0, failed_out
    assert "the install failed: removing .venv" in failed_out
    assert not (failing / ".venv").exists(), failed_out
    assert runs[1].returncode == 0, good_out
    assert "removing .venv, left by an install that did not finish" in good_out
    assert (good / ".venv" / ".installed").exists()
    subprocess.run([str(good / ".venv" / "bin" / "python"), "-c", "import pip"], check=True)
