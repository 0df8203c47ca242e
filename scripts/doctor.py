#!/usr/bin/env python3
"""Check this machine before `make run` / `make test` (`make doctor`; docs/doctor.md).

Standard library only, and Python 3.7+ syntax: it runs with the `$(PYTHON)` the Makefile picked,
before `.venv` exists, so that a wrong interpreter, a missing `python3.11-venv`, a full disk or an
unreachable package index is named with its fix in a second instead of failing minutes into the
install. Each check is one function returning a `Result`; only a "fail" makes the exit status 1.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1024**3
NEEDED_PYTHON = (3, 11)
VENV_NEEDS_GB = 4  # the ~3 GB environment, pip's unpacking and some room
UPDATE_NEEDS_GB = 2  # a new lock into an existing .venv: the changed wheels, unpacked
LOW_DISK_GB = 1  # below this, even an installed project runs out (models, stores, caches)
LOW_MEMORY_GB = 4
INDEX_TIMEOUT_S = 2.0
PYPI = "https://pypi.org/simple"
# Vector extensions TensorFlow's kernels use: AVX is required by the wheel, the rest only speed.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")


class Result:
    """One check's verdict: what was found and, unless ok, how to fix it (a plain class:
    dataclasses alone would add a tenth of the doctor's start-up time)."""

    __slots__ = ("fix", "found", "name", "status")

    def __init__(self, name: str, status: str, found: str, fix: str = "") -> None:
        self.name, self.status, self.found, self.fix = name, status, found, fix

    def as_dict(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in ("name", "status", "found", "fix")}


def sudo() -> str:
    """The prefix an apt-get fix needs for this user."""
    return "" if os.geteuid() == 0 else "sudo "


def check_python(version: tuple[int, ...], executable: str) -> Result:
    """The lock is resolved for CPython 3.11; another minor version cannot install it."""
    found = f"Python {'.'.join(map(str, version[:3]))} ({executable})"
    if tuple(version[:2]) == NEEDED_PYTHON:
        return Result("python", OK, found)
    fix = (
        "pick a Python 3.11: PYTHON=/path/to/python3.11 make run, or install one: "
        f"{sudo()}apt-get install python3.11 python3.11-venv"
    )
    return Result("python", FAIL, found + ", 3.11 needed", fix)


def check_venv_modules() -> Result:
    """`python -m venv` needs `venv` and `ensurepip`: Debian ships them apart."""
    fix = f"{sudo()}apt-get install python{sys.version_info[0]}.{sys.version_info[1]}-venv"
    try:
        import ensurepip
        import venv  # noqa: F401

        return Result("venv", OK, f"venv and ensurepip work (bundled pip {ensurepip.version()})")
    except Exception as exc:  # ImportError on Debian without the package, or no bundled wheel
        return Result("venv", FAIL, f"python -m venv cannot work: {exc}", fix)


def python_runs(python: Path) -> bool:
    """Whether a venv's python can start, cheaply: its symlink chain ends in a file."""
    return os.path.isfile(os.path.realpath(python)) and os.access(python, os.X_OK)


def check_project_venv(venv: Path, installed: bool) -> Result:
    """An installed .venv whose interpreter is gone (an upgraded pyenv, say) fails every verb."""
    python = venv / "bin" / "python"
    if not installed:
        if python_runs(python):
            return Result("project venv", OK, f"{venv} out of date: make updates it from the lock")
        return Result("project venv", OK, f"{venv} not built yet: make builds it (~3 GB, minutes)")
    if python_runs(python):
        return Result("project venv", OK, f"{venv} installed")
    fix = f"rm -rf {venv} (the next make builds it again)"
    return Result("project venv", FAIL, f"{python} points at no interpreter", fix)


def check_disk(venv: Path, installed: bool) -> Result:
    """The first install writes ~3 GB where .venv goes; a full disk breaks it halfway."""
    where = venv.absolute()
    while not where.exists():
        where = where.parent
    free_gb = shutil.disk_usage(where).free / GIB
    found = f"{free_gb:.1f} GiB free in {where}"
    needed = 0  # installed: nothing to write
    if not installed:
        updating = python_runs(venv / "bin" / "python")
        needed = UPDATE_NEEDS_GB if updating else VENV_NEEDS_GB
    if free_gb < needed:
        fix = f"free {needed - free_gb:.1f} GiB there, or clone the project onto another disk"
        return Result("disk", FAIL, found + f", {needed} GiB needed to install .venv", fix)
    if free_gb < LOW_DISK_GB:
        fix = "free some space (pip's cache: rm -rf ~/.cache/pip; old runs: mlflow.db, .bentoml)"
        return Result("disk", WARN, found + ", very low", fix)
    return Result("disk", OK, found)


def pip_config_files(environ: dict[str, str]) -> list[Path]:
    """pip's own configuration files, in its override order (pip/_internal/configuration.py)."""
    env_file = environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d, "pip", "pip.conf") for d in dirs.split(os.pathsep)] + [Path("/etc/pip.conf")]
    if not (env_file and os.path.exists(env_file)):
        home = Path(environ.get("HOME") or Path.home())
        user_dir = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        files += [home / ".pip" / "pip.conf", user_dir / "pip" / "pip.conf"]
    if env_file:
        files.append(Path(env_file))
    return files


def pip_settings(environ: dict[str, str]) -> dict[str, str]:
    """What `pip install` reads: [global], then [install] of every file, then PIP_* variables."""
    parsers = []
    for path in pip_config_files(environ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        parsers.append(parser)
    settings: dict[str, str] = {}
    for section in ("global", "install"):
        for parser in parsers:
            if parser.has_section(section):
                for key, value in parser.items(section):
                    if value:
                        settings[key.lower().replace("_", "-")] = value
    for key, value in environ.items():
        if key.startswith("PIP_") and value:
            settings[key[4:].lower().replace("_", "-")] = value
    return settings


def is_true(value: str) -> bool:
    return value.strip().lower() in ("1", "y", "yes", "t", "true", "on")


def package_sources(settings: dict[str, str]) -> list[str]:
    """Every place pip looks for packages: the index, the extra indexes, the find-links."""
    sources = [] if is_true(settings.get("no-index", "0")) else [settings.get("index-url", PYPI)]
    sources += settings.get("extra-index-url", "").split()
    return sources + settings.get("find-links", "").split()


def shown(url: str) -> str:
    """A source as printed: a password in it becomes ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def probe(source: str, settings: dict[str, str], timeout: float) -> str:
    """'' when pip could read `source` (a folder that exists, or any HTTP answer), else why not."""
    parts = urlsplit(source)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path) if parts.scheme else source
        return "" if os.path.exists(path) else "no such folder"
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=settings.get("cert"))
    if parts.hostname in settings.get("trusted-host", "").split():
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    handlers: list = [urllib.request.HTTPSHandler(context=context)]
    if settings.get("proxy"):
        proxy = settings["proxy"]
        handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    url = parts._replace(netloc=netloc).geturl()  # credentials only matter past the first answer
    try:
        opener = urllib.request.build_opener(*handlers)
        opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered: reachable (a 401 or 404 is pip's business)
    except Exception as exc:
        return str(getattr(exc, "reason", exc)) or type(exc).__name__
    return ""


def check_index(
    environ: dict[str, str], installed: bool, timeout: float = INDEX_TIMEOUT_S
) -> Result:
    """The first install downloads ~3 GB through pip; probe each source pip would use, in parallel,
    within `timeout` in all (a DNS lookup that hangs is abandoned, not waited for)."""
    if installed:
        return Result("index", OK, "not needed: .venv is installed")
    settings = pip_settings(environ)
    sources = package_sources(settings)
    fix = (
        "check the network or proxy (https_proxy=...), or point pip at a reachable mirror: "
        "PIP_INDEX_URL=https://host/simple make run (or index-url in /etc/pip.conf)"
    )
    if not sources:
        return Result("index", FAIL, "pip has no package source (no-index, no find-links)", fix)
    answers: dict[str, str] = {}

    def ask(source: str) -> None:
        answers[source] = probe(source, settings, timeout)

    deadline = time.monotonic() + timeout
    threads = [threading.Thread(target=ask, args=(s,), daemon=True) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    bad = {s: answers.get(s, f"no answer within {timeout:g} s") for s in sources}
    bad = {s: why for s, why in bad.items() if why}
    good = [shown(s) for s in sources if s not in bad]
    lost = "; ".join(f"{shown(s)}: {why}" for s, why in bad.items())
    if not good:
        return Result("index", FAIL, f"no package source reachable ({lost})", fix)
    if bad:
        return Result("index", WARN, f"reachable: {', '.join(good)}; not: {lost}", fix)
    return Result("index", OK, "reachable: " + ", ".join(good))


def port_holder(port: int, proc: Path) -> str:
    """Who listens on `port`, if /proc says so cheaply (own processes only, unless root)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(f"socket:[{fields[9]}]")
    deadline = time.monotonic() + 0.3
    for pid_dir in proc.glob("[0-9]*"):
        if not inodes or time.monotonic() > deadline:
            break
        try:
            links = {os.readlink(fd) for fd in (pid_dir / "fd").iterdir()}
            if links & inodes:
                return f"{(pid_dir / 'comm').read_text().strip()}, pid {pid_dir.name}"
        except OSError:
            continue
    return ""


def port_free(port: int) -> bool:
    """A bind as the servers do it (SO_REUSEADDR: a connection in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_port(port: int, variable: str, verb: str, proc: Path) -> Result:
    """A busy port only stops the verb that uses it, and a variable moves it: a warning."""
    name = f"port {port}"
    if port_free(port):
        return Result(name, OK, f"free (make {verb})")
    holder = port_holder(port, proc)
    other = next((p for p in range(port + 1, port + 20) if port_free(p)), port + 1)
    found = f"in use{f' by {holder}' if holder else ''}: make {verb} cannot listen there"
    return Result(name, WARN, found, f"{variable}={other} make {verb}")


def check_cpu(cpuinfo: str, usable: int | None) -> Result:
    """TensorFlow's x86 wheel is built for AVX: without it, `import tensorflow` dies."""
    lines = [line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line]
    if not lines:
        return Result("cpu", WARN, "no cpuinfo: AVX unknown", "check by hand: TensorFlow needs AVX")
    count = sum(1 for key, _ in lines if key.strip() == "processor")
    flags = next((v.split() for k, v in lines if k.strip() in ("flags", "Features")), [])
    cpus = f"{count} CPUs" + (f" ({usable} usable)" if usable and usable < count else "")
    is_x86 = any(k.strip() == "flags" for k, _ in lines)
    if is_x86 and "avx" not in flags:
        fix = "run it on a CPU with AVX (x86 since 2011), or enable AVX in the VM's CPU model"
        return Result("cpu", FAIL, f"{cpus}, no AVX: the TensorFlow wheel needs it", fix)
    have = [f for f in VECTOR_FLAGS if f in flags] if is_x86 else ["no x86 (no AVX needed)"]
    return Result("cpu", OK, f"{cpus}, {' '.join(have) or 'AVX only (training is slower)'}")


def cgroup_memory_limit() -> int | None:
    """A container's memory cap, which /proc/meminfo does not show."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def check_memory(meminfo: str, limit: int | None) -> Result:
    """Training holds MNIST and the model in memory, the service runs two workers: 4 GiB is snug."""
    values = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            values[key] = int(rest.split()[0]) * 1024
    if "MemTotal" not in values:
        return Result("memory", WARN, "no meminfo: size unknown", "check by hand: 4 GiB or more")
    total = min(values.get("MemTotal", 0), limit or sys.maxsize)
    available = min(values.get("MemAvailable", total), total)
    found = f"{total / GIB:.1f} GiB ({available / GIB:.1f} available)"
    if limit and limit < values.get("MemTotal", 0):
        found += ", cgroup limit"
    if total < LOW_MEMORY_GB * GIB:
        fix = "close other programs or use a machine with more memory; the quick recipe is lighter"
        return Result("memory", WARN, found + f", under {LOW_MEMORY_GB} GiB", fix)
    return Result("memory", OK, found)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def run_checks(args: argparse.Namespace) -> list[Result]:
    proc, venv = Path(args.proc), Path(args.venv)
    results = [
        check_python(tuple(sys.version_info), sys.executable),
        check_venv_modules(),
        check_project_venv(venv, args.installed),
        check_disk(venv, args.installed),
        check_index(dict(os.environ), args.installed),
    ]
    if not args.no_ports:
        results += [
            check_port(args.port, "PORT", "run", proc),
            check_port(args.mlflow_port, "MLFLOW_PORT", "mlflow-ui", proc),
            check_port(args.prom_port, "PROM_PORT", "monitor", proc),
        ]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    results.append(check_cpu(read(proc / "cpuinfo"), usable))
    results.append(check_memory(read(proc / "meminfo"), cgroup_memory_limit()))
    return results


def marks() -> dict[str, str]:
    """✓ ! ✗ where stdout takes UTF-8, plain ASCII where it does not."""
    encoding = (getattr(sys.stdout, "encoding", None) or "ascii").lower().replace("-", "")
    if encoding in ("utf8", "utf8sig"):
        return {OK: "✓", WARN: "!", FAIL: "✗"}
    return {OK: "ok", WARN: "!!", FAIL: "XX"}


def report(results: list[Result], quiet: bool) -> str:
    mark = marks()
    shown_results = [r for r in results if not quiet or r.status != OK]
    width = max((len(r.name) for r in shown_results), default=0)
    lines = [f"{mark[r.status]:>2} {r.name:<{width}}  {r.found}" for r in shown_results]
    fixes = [f"   {r.name}: {r.fix}" for r in shown_results if r.fix]
    if fixes:
        lines += ["", "fixes:", *fixes]
    if quiet and shown_results:
        lines.append("   (make doctor: the whole report)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=".venv", help="where the project's venv goes")
    parser.add_argument("--installed", action="store_true", help="the venv is up to date")
    parser.add_argument("--port", type=int, default=3000, help="make serve / make run")
    parser.add_argument("--mlflow-port", type=int, default=5000, help="make mlflow-ui")
    parser.add_argument("--prom-port", type=int, default=9090, help="make monitor")
    parser.add_argument("--no-ports", action="store_true", help="skip the ports (make test)")
    parser.add_argument("--proc", default="/proc", help="where cpuinfo and meminfo are read")
    parser.add_argument("--quiet", action="store_true", help="print only the problems")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    results = run_checks(args)
    failed = any(r.status == FAIL for r in results)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [r.as_dict() for r in results]}, indent=2))
    else:
        text = report(results, args.quiet)
        if text:
            print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
