"""Secrets out of every message: the password in a URL (`http://user:pass@host`) becomes `***`.

Tracking URIs and package-index URLs may carry credentials; anything the project prints, logs to
MLflow or echoes from the Makefile goes through `redact` first. `python -m pipelines.redact TEXT`
is the same function for the Makefile.
"""

from __future__ import annotations

import re
import sys
import traceback
from types import TracebackType

MASK = "***"

# scheme://user:password@ or scheme://token@ ; the password runs to the last "@" before the path.
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*)(?P<pw>:[^/\s]*)?@"
)


def redact(text: str) -> str:
    """`text` with every URL's password (or a lone token before "@") replaced by ***."""

    def mask(m: re.Match[str]) -> str:
        if m["pw"] is None:  # scheme://token@host: the whole user part may be the secret
            return f"{m['scheme']}{MASK}@" if m["user"] else m[0]
        return f"{m['scheme']}{m['user']}:{MASK}@"

    return _USERINFO.sub(mask, text)


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    print(redact("".join(traceback.format_exception(kind, value, tb))), end="", file=sys.stderr)


def redact_tracebacks() -> None:
    """Redact uncaught tracebacks too (an MlflowException quotes the tracking URI in full)."""
    sys.excepthook = _excepthook


def main() -> None:
    print(redact(" ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
