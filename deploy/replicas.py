"""Replicas of the service behind HAProxy on loopback, replaced one at a time without dropping a
request (`make serve-replicas`; docs/replicas.md has the settings and the measurements).

    python -m deploy.replicas [--replicas 2] [--port 3000]
    python -m deploy.replicas --port 3000 --command "show stat"   # HAProxy's runtime API

Each replica is a `bentoml serve service.service:DigitClassifier` on a free loopback port, run by
bench/servers.py's `running` (its own session; stopping it signals every descendant). Each gets a
BENTOML_HOME of its own: every `bentoml serve` empties `$BENTOML_HOME/prometheus_multiproc_dir`
at start, and BentoML derives that folder from the home (it sets PROMETHEUS_MULTIPROC_DIR itself,
from the home, so the variable cannot steer it), so a sibling on the same home would lose its
/metrics. The homes hold symlinks to the caller's home (the model store, the Bentos) beside a
multiproc dir and a tmp of their own: all replicas read one store, so a `make package` reaches
every replica that follows `:latest`.

HAProxy listens on 127.0.0.1:PORT. Its backend has `slots` servers, all in maintenance in the
config; a replica joins through the runtime API (address, `state ready`, then HAProxy's own health
check must say UP), so nothing ever reloads HAProxy.

A rolling replacement of replica i (`Replicas.replace`): start the new one in a free slot and wait
for its /readyz; enable it and wait until HAProxy's checks say UP; drain the old one (no new
requests) until HAProxy counts no session on it, put it in maintenance, then SIGTERM it and wait.
Nothing relies on the old worker's /readyz turning 503 at SIGTERM: by then HAProxy has long
stopped sending it anything.

The CLI replaces every replica in turn on SIGHUP (new code, the same settings) and any replica
that exits; Ctrl-C or SIGTERM stops it all.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from bench.servers import ServerError, free_port, running

REPO = Path(__file__).resolve().parent.parent
SERVICE = "service.service:DigitClassifier"
FRONTEND, BACKEND = "digits", "replicas"
LB_LIVEZ = "/lb-livez"  # HAProxy answers it itself (monitor-uri): up, whatever the replicas do
PLACEHOLDER = "127.0.0.1:1"  # a free slot's address until a replica takes it
PRIVATE = ("prometheus_multiproc_dir", "tmp")  # per replica; the rest of the home is shared
SUN_PATH_MAX = 107  # a Unix socket's path, in bytes
UP_TIMEOUT_S = 30.0  # enabled → UP: rise 2 × inter 1 s, with room for a busy machine
DRAIN_TIMEOUT_S = 40.0  # > `timeout server` (35 s): HAProxy has answered everything by then

CONFIG = """\
# Written by deploy/replicas.py at each start; edits here are lost.
global
    maxconn 4096
    # one thread forwards thousands of requests/s: the cores are the replicas'
    nbthread 1
    stats socket {sock} mode 600 level admin
    stats timeout 1m

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    # the whole request head within 10 s (the service's own DIGIT_HEADER_TIMEOUT_S)
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 30s
    # BentoML gives up on a request after 30 s (traffic.timeout); HAProxy waits a bit longer
    timeout server 35s
    timeout check 3s
    # predictions are pure, so a request may be sent again: to another replica (redispatch 1),
    # when the connection failed, or a reused keep-alive one was closed under it
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend {frontend}
    bind {host}:{port}
    monitor-uri {livez}
    default_backend {backend}

backend {backend}
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter 1s fastinter 500ms downinter 1s rise 2 fall 2
    # free slots, in maintenance until a replica takes one (Replicas._enable)
    server-template r 1-{slots} {placeholder} check disabled
"""


class ReplicaError(RuntimeError):
    """HAProxy refused a command, or a server never reached the state it had to."""


def haproxy_config(port: int, slots: int, sock: Path, host: str = "127.0.0.1") -> str:
    """The config: frontend on host:port, a backend of `slots` servers r1..rN in maintenance."""
    if len(os.fsencode(sock)) > SUN_PATH_MAX:
        raise ReplicaError(f"socket path too long for a Unix socket ({SUN_PATH_MAX} bytes): {sock}")
    return CONFIG.format(
        sock=sock,
        frontend=FRONTEND,
        backend=BACKEND,
        host=host,
        port=port,
        livez=LB_LIVEZ,
        slots=slots,
        placeholder=PLACEHOLDER,
    )


def write_config(path: Path, port: int, slots: int, sock: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(haproxy_config(port, slots, sock))
    return path


def haproxy_binary() -> str:
    """Debian puts haproxy in /usr/sbin, which a user's PATH often lacks."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/usr/local/sbin"
    found = shutil.which("haproxy", path=path)
    if found is None:
        raise SystemExit("haproxy is not installed: run `scripts/apt-ensure haproxy:haproxy`")
    return found


def replica_home(shared: Path, home: Path) -> Path:
    """A BENTOML_HOME whose models and Bentos are `shared`'s (symlinks) but whose multiproc dir
    and tmp are its own."""
    home.mkdir(parents=True)
    if shared.is_dir():
        for entry in shared.iterdir():
            if entry.name not in PRIVATE:
                (home / entry.name).symlink_to(entry.resolve())
    return home


def serve_argv(target: str, port: int) -> list[str]:
    bentoml = Path(sys.executable).parent / "bentoml"
    return [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)]


class Admin:
    """HAProxy's runtime API on its Unix socket, one command per connection (no socat needed)."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path, self.timeout_s = path, timeout_s

    def __call__(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(str(self.path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers: name → {"status": "UP", "scur": "0", ...}."""
        lines = self(f"show stat {BACKEND} 4 -1").splitlines()
        if not lines or not lines[0].startswith("# "):
            raise ReplicaError(f"unexpected `show stat` reply: {lines[:2]}")
        header = lines[0][2:].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows}

    def set_server(self, slot: str, *words: str) -> None:
        """`set server replicas/<slot> <words>`; a reply that is not a success raises."""
        reply = self(f"set server {BACKEND}/{slot} {' '.join(words)}").strip()
        if reply and "changed" not in reply and "no need to change" not in reply:
            raise ReplicaError(f"set server {slot} {' '.join(words)}: {reply}")

    def wait(
        self, slot: str, ok: Callable[[dict[str, str]], bool], what: str, timeout_s: float
    ) -> dict[str, str]:
        """Poll `show stat` until the slot's row satisfies `ok`; its last row either way, or
        ReplicaError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            row = self.servers()[slot]
            if ok(row):
                return row
            if time.monotonic() > deadline:
                raise ReplicaError(
                    f"{slot} not {what} after {timeout_s:.0f} s: status {row.get('status')}, "
                    f"sessions {row.get('scur')}, check {row.get('check_status')}"
                )
            time.sleep(0.1)


@dataclass(eq=False)
class Replica:
    slot: str  # its server in HAProxy's backend (r1, r2, ...)
    port: int
    env: dict[str, str]  # what it was started with, BENTOML_HOME aside (replacements start there)
    home: Path
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)
    stack: ExitStack = field(repr=False)  # closing it stops the process tree

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Replacement:
    """When each step of one rolling replacement ended (time.monotonic()), to say what happened
    during it."""

    old: str
    new: str
    started: float
    ready: float  # the new replica's /readyz answered 200
    up: float  # HAProxy's checks say UP: it takes requests
    drained: float  # the old one had no session left and is in maintenance
    stopped: float  # the old process tree has exited

    @property
    def seconds(self) -> float:
        return self.stopped - self.started


class Replicas:
    """`count` replicas behind HAProxy on 127.0.0.1:port; a context manager that starts them all
    and always stops them all (HAProxy, every replica, replicas still starting too)."""

    def __init__(
        self,
        count: int = 2,
        port: int = 3000,
        *,
        env: Mapping[str, str] | None = None,
        run_dir: Path | None = None,
        cwd: Path = REPO,
        slots: int | None = None,
        target: str = SERVICE,
        timeout_s: float = 180.0,
    ) -> None:
        self.count, self.port, self.cwd = count, port, cwd
        self.target, self.timeout_s = target, timeout_s
        self.env = dict(os.environ if env is None else env)
        self.shared_home = Path(self.env.get("BENTOML_HOME") or Path.home() / "bentoml")
        self.slots = max(slots or 2 * count, count + 1)  # one free slot at least, to replace
        self.run_dir = (run_dir or default_run_dir(port)).absolute()
        self.sock = self.run_dir / "haproxy.sock"
        self.config = self.run_dir / "haproxy.cfg"
        self.homes = self.run_dir / "homes"
        self.admin = Admin(self.sock)
        self.replicas: list[Replica] = []
        self._live: list[Replica] = []  # every replica started and not yet stopped
        self._lock = threading.Lock()
        self._closed = False
        self._serial = itertools.count(1)
        self._haproxy = ExitStack()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Replicas:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Replicas:
        """HAProxy first (all slots in maintenance), then the replicas, started side by side."""
        write_config(self.config, self.port, self.slots, self.sock)
        argv = [haproxy_binary(), "-f", str(self.config), "-db"]
        log = self.run_dir / "haproxy.log"
        ready = f"{self.url}{LB_LIVEZ}"
        self._haproxy.enter_context(
            running("haproxy", argv, ready, cwd=self.run_dir, log=log, timeout_s=15)
        )
        slots = self._free_slots()[: self.count]
        with ThreadPoolExecutor(self.count) as pool:
            futures = [pool.submit(self._launch, slot, self.env) for slot in slots]
            try:
                started = [f.result() for f in futures]
            except BaseException:
                self._kill_by_home(self.homes)  # so the threads still waiting return now
                raise
        for replica in started:
            self._enable(replica)
        self.replicas = started
        return self

    def replace(self, i: int, env_overrides: Mapping[str, str] | None = None) -> Replacement:
        """Replace replicas[i] (0-based) by a new process with its env plus `env_overrides`,
        without a request going unanswered."""
        old = self.replicas[i]
        started = time.monotonic()
        free = self._free_slots()
        if not free:
            raise ReplicaError(f"no free slot among {self.slots} to start a replacement in")
        new = self._launch(free[0], {**old.env, **(env_overrides or {})})
        ready = time.monotonic()
        try:
            self._enable(new)
        except BaseException:
            self._retire(new)
            raise
        up = time.monotonic()
        self.replicas[i] = new
        self._drain(old)
        drained = time.monotonic()
        self._retire(old)
        return Replacement(old.slot, new.slot, started, ready, up, drained, time.monotonic())

    def roll(self) -> list[Replacement]:
        """Replace every replica in turn, with the env it has."""
        return [self.replace(i) for i in range(len(self.replicas))]

    def stop(self) -> None:
        """HAProxy, then every replica (side by side); then whatever is still starting."""
        with self._lock:
            self._closed = True
            live, self._live = self._live, []
        self._haproxy.close()
        if live:
            with ThreadPoolExecutor(len(live)) as pool:
                list(pool.map(lambda r: r.stack.close(), live))
        self._kill_by_home(self.homes)

    # --- steps -----------------------------------------------------------------------------------

    def _free_slots(self) -> list[str]:
        with self._lock:
            taken = {r.slot for r in self._live}
        return [f"r{n}" for n in range(1, self.slots + 1) if f"r{n}" not in taken]

    def _launch(self, slot: str, env: dict[str, str]) -> Replica:
        """Start a replica on a free port with a home of its own; return once /readyz says 200."""
        name = f"{slot}-{next(self._serial)}"
        home = replica_home(self.shared_home, self.homes / name)
        port, log, stack = free_port(), self.run_dir / f"{name}.log", ExitStack()
        proc = stack.enter_context(
            running(
                f"replica {name}",
                serve_argv(self.target, port),
                f"http://127.0.0.1:{port}/readyz",
                cwd=self.cwd,
                log=log,
                env={**env, "BENTOML_HOME": str(home)},
                timeout_s=self.timeout_s,
            )
        )
        replica = Replica(slot, port, env, home, log, proc, stack)
        with self._lock:
            closed = self._closed
            if not closed:
                self._live.append(replica)
        if closed:  # stop() ran while this one was starting
            stack.close()
            raise ReplicaError(f"stopped while {name} was starting")
        return replica

    def _enable(self, replica: Replica) -> None:
        """Point the replica's slot at it and let HAProxy's checks bring it UP."""
        self.admin.set_server(replica.slot, "addr", "127.0.0.1", "port", str(replica.port))
        # Straight from maintenance to ready, HAProxy would count it UP before any check. Via
        # drain (checked, no traffic) and forced down, it takes requests only once `rise` checks
        # on its new address have passed.
        self.admin.set_server(replica.slot, "state", "drain")
        self.admin.set_server(replica.slot, "health", "down")
        self.admin.set_server(replica.slot, "state", "ready")
        self.admin.wait(replica.slot, lambda row: row["status"] == "UP", "UP", UP_TIMEOUT_S)

    def _drain(self, replica: Replica) -> None:
        """No new requests for it; once HAProxy counts no session (nor queued request) on it,
        maintenance. Past DRAIN_TIMEOUT_S HAProxy has answered its requests anyway."""
        self.admin.set_server(replica.slot, "state", "drain")
        with suppress(ReplicaError):
            self.admin.wait(
                replica.slot,
                lambda row: row["scur"] == "0" and row["qcur"] == "0",
                "drained",
                DRAIN_TIMEOUT_S,
            )
        self.admin.set_server(replica.slot, "state", "maint")

    def _retire(self, replica: Replica) -> None:
        with self._lock:
            if replica in self._live:
                self._live.remove(replica)
        replica.stack.close()  # SIGTERM to its tree, SIGKILL what is left after 20 s
        self._kill_by_home(replica.home)  # what a killed replica left behind

    def _kill_by_home(self, home: Path) -> None:
        """SIGKILL every process whose BENTOML_HOME is `home` or under it: replicas still starting
        in another thread (stop() does not know them yet), and workers a replica left behind when
        it was killed (BentoML starts them in sessions of their own, so once their parent is gone
        no process tree reaches them). The homes are this run's own: nothing else matches."""
        wanted = os.fsencode(home)
        for environ_file in Path("/proc").glob("[0-9]*/environ"):
            try:
                environ = environ_file.read_bytes().split(b"\0")
            except OSError:  # gone, or not ours
                continue
            for var in environ:
                if var.startswith(b"BENTOML_HOME="):
                    value = var.removeprefix(b"BENTOML_HOME=")
                    if value == wanted or value.startswith(wanted + b"/"):
                        with suppress(ProcessLookupError):
                            os.kill(int(environ_file.parent.name), signal.SIGKILL)
                    break


def default_run_dir(port: int) -> Path:
    """One per port, so `--command` finds the socket of the instance on that port."""
    return Path(tempfile.gettempdir()) / f"digit-replicas-{port}"


def _shared_cores(env: dict[str, str], count: int) -> None:
    """Unless the caller chose, the replicas share the cores instead of each taking them all."""
    cores = os.cpu_count() or 2
    if not env.get("DIGIT_WORKERS", "").strip():
        env["DIGIT_WORKERS"] = str(max(1, cores // count))
    if not env.get("DIGIT_TF_THREADS", "").strip():
        env["DIGIT_TF_THREADS"] = str(max(1, cores // (count * int(env["DIGIT_WORKERS"]))))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="how many (default 2)")
    parser.add_argument("--port", type=int, default=3000, help="HAProxy's port on 127.0.0.1")
    parser.add_argument("--command", help="send this to the runtime API of the instance on --port")
    args = parser.parse_args(argv)
    run_dir = default_run_dir(args.port)
    admin = Admin(run_dir / "haproxy.sock")
    if args.command:
        print(admin(args.command), end="")
        return 0
    with suppress(OSError):
        admin("show info")
        raise SystemExit(f"replicas already run on port {args.port} (socket {admin.path})")
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ)
    _shared_cores(env, args.replicas)
    roll = threading.Event()
    # SIGINT too: a shell without job control starts a background job with SIGINT ignored
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, lambda signum, frame: roll.set())
    print(f"==> {args.replicas} replicas of {SERVICE} behind HAProxy (logs in {run_dir})")
    try:
        with Replicas(args.replicas, args.port, env=env, run_dir=run_dir) as reps:
            ports = ", ".join(f"{r.slot} :{r.port}" for r in reps.replicas)
            print(f"==> serving on {reps.url} ({ports})", flush=True)
            print(f"    HUP rolls them (kill -HUP {os.getpid()}); Ctrl-C stops everything")
            cli = f"python -m deploy.replicas --port {args.port} --command 'show stat'"
            print(f"    runtime API: {cli}")
            while True:
                if roll.wait(1.0):
                    roll.clear()
                    for done in reps.roll():
                        print(f"==> {done.old} → {done.new} in {done.seconds:.1f} s", flush=True)
                for i, replica in enumerate(reps.replicas):
                    if replica.proc.poll() is not None:
                        print(f"==> {replica.slot} exited ({replica.proc.returncode}): replacing")
                        done = reps.replace(i)
                        print(f"==> {done.old} → {done.new} in {done.seconds:.1f} s", flush=True)
    except KeyboardInterrupt:
        print("==> stopped")
    except (ServerError, ReplicaError) as err:
        print(f"replicas: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
