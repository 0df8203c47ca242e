"""`make monitor`: a real Prometheus with this folder's config against the running service.

    python -m monitoring.serve [--service 127.0.0.1:3000] [--listen 127.0.0.1:9090] [--key-file F]

prometheus.yml is the one source: it is rendered into the data folder with the service's address
(and, for the tests, a shorter scrape interval) and absolute rule-file paths, then Prometheus (the
Debian package, `scripts/apt-ensure promtool:prometheus`) runs in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "prometheus.yml"
DASHBOARD = HERE / "grafana" / "digit-service.json"
JOB = "digit-service"


def render(
    dest: Path, service: str, interval: str | None = None, key_file: Path | None = None
) -> Path:
    """Write prometheus.yml to dest/ scraping `service` (host:port), rule files made absolute;
    with `key_file`, the scrape sends the service's API key read from it (never the key itself)."""
    config = yaml.safe_load(CONFIG.read_text())
    if interval:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(HERE / f) for f in config["rule_files"]]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job["static_configs"] = [{"targets": [service]}]
    if key_file is not None:
        job["authorization"] = {"type": "Bearer", "credentials_file": str(Path(key_file).resolve())}
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def command(config: Path, listen: str, data: Path) -> list[str]:
    """The Prometheus command line: its own storage folder, listening on `listen` only."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit(
            "monitor: `prometheus` is not installed (scripts/apt-ensure promtool:prometheus)"
        )
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address={listen}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]


def _in_use(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="127.0.0.1:3000", help="the service's host:port")
    parser.add_argument("--listen", default="127.0.0.1:9090", help="Prometheus' host:port")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "digit-mlops-prometheus",
        help="storage folder (kept between runs)",
    )
    parser.add_argument(
        "--key-file", type=Path, help="the service's DIGIT_API_KEY_FILE, when it has a key"
    )
    args = parser.parse_args()
    if _in_use(args.listen):
        raise SystemExit(
            f"monitor: something already listens on {args.listen} (Debian's own prometheus "
            "service? stop it with `service prometheus stop`, or use make monitor PROM_PORT=...)"
        )
    if not _in_use(args.service):
        print(
            f"monitor: nothing answers on {args.service} yet; start the service (`make run`); "
            "the target shows as down until it does",
            file=sys.stderr,
        )
    config = render(args.data, args.service, key_file=args.key_file)
    ui = f"http://{args.listen}"
    print(
        f"==> Prometheus {ui} scraping http://{args.service}/metrics every "
        f"{yaml.safe_load(CONFIG.read_text())['global']['scrape_interval']}\n"
        f"    targets  {ui}/targets\n"
        f"    alerts   {ui}/alerts\n"
        f"    rules    {ui}/rules\n"
        f"    a query  {ui}/graph?g0.expr=digit%3Adigit_predictions%3Arate5m\n"
        f"    Grafana: import {DASHBOARD.relative_to(HERE.parent)} (datasource: {ui})\n"
        f"    data in {args.data}; Ctrl-C stops it",
        flush=True,
    )
    proc = subprocess.Popen(command(config, args.listen, args.data / "tsdb"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop Prometheus with us
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        sys.exit(proc.wait())


if __name__ == "__main__":
    main()
