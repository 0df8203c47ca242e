"""The feedback database: what people told the page about its answers, in one table.

Written by the service (`POST /feedback`, `POST /feedback/review`) and read by the pipeline's
`feedback` stage, so both sides agree on one schema here. Any SQLAlchemy URL works; the defaults
are a SQLite file (zero setup) and, in team mode, the PostgreSQL of `make stores` (its
`python -m stores env` prints the URL beside MLFLOW_TRACKING_URI). The secret that signs
prediction ids lives in the database too (table `feedback_meta`), so every worker and replica
that shares the database checks the same signatures without any per-request state.

A row holds the 28×28 the model saw (784 bytes), the digit it answered with its confidence and
registry version, and the label a person gave (none: "not sure", left for a helper to label in
the page's "help label" view). Nothing about the person is kept but a keyed hash of their
address, for the rate limit.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from common.image import SHAPE

ENV = "DIGIT_FEEDBACK_DB"  # the switch: a SQLAlchemy URL (sqlite:///..., postgresql+psycopg2://...)
DEFAULT_FILE = "feedback.db"
SEEN_BYTES = SHAPE[0] * SHAPE[1]
MAX_VERSION = 64  # characters of a registry version

metadata = sa.MetaData()
FEEDBACK = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # the prediction id's signature (hex): unique, so one answer is labelled at most once
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),  # when it was stored (unix s)
    sa.Column("predicted_at", sa.BigInteger, nullable=False),  # when the answer was given
    sa.Column("client", sa.String(32), nullable=False),  # keyed hash of the address
    sa.Column("seen", sa.LargeBinary, nullable=False),  # 28×28 uint8, row-major
    sa.Column("answered", sa.SmallInteger, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("label", sa.SmallInteger, nullable=True),  # None: the person was not sure
    sa.Column("model_version", sa.String(MAX_VERSION), nullable=False),
    sa.Column("review_label", sa.SmallInteger, nullable=True),  # a helper's label
    sa.Column("reviewed_at", sa.BigInteger, nullable=True),
    sa.Index("feedback_client_time", "client", "created_at"),
    sa.Index("feedback_confidence", "confidence"),
)
META = sa.Table(
    "feedback_meta",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)


class StoreFull(Exception):
    """The table holds the most rows it may."""


class RateLimited(Exception):
    """This client sent its share for now."""


class Duplicate(Exception):
    """Feedback for this prediction id is stored already (a replay)."""


class NotFound(Exception):
    """No such row, or none a helper may label."""


@dataclass(frozen=True)
class NewFeedback:
    key: str
    predicted_at: int
    client: str
    seen: np.ndarray  # (28, 28) uint8
    answered: int
    confidence: float
    label: int | None
    model_version: str


@dataclass(frozen=True)
class Queued:
    """A stored low-confidence input waiting for a helper's label."""

    id: int
    seen: np.ndarray
    answered: int
    confidence: float
    label: int | None
    model_version: str


def default_url(folder: Path) -> str:
    return f"sqlite:///{Path(folder).absolute() / DEFAULT_FILE}"


def url_from_env(default_folder: Path, env: Mapping[str, str] | None = None) -> str:
    import os

    env = os.environ if env is None else env
    return (env.get(ENV) or "").strip() or default_url(default_folder)


def shown(url: str) -> str:
    """The URL with any password hidden, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say so without echoing it
        return "(an unreadable URL)"


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL (None: another database, or in memory)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


class FeedbackStore:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict = {"future": True}
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 10}  # wait for another worker's write
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 2
            if url.startswith("postgresql"):  # a server that does not answer: fail, not hang
                kwargs["connect_args"] = {"connect_timeout": 10}
        self.engine = sa.create_engine(url, **kwargs)
        if path is not None:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    @classmethod
    def existing(cls, url: str) -> FeedbackStore | None:
        """The store at `url`, or None when it is a SQLite file that does not exist yet (reading
        must not create one)."""
        path = sqlite_path(url)
        if path is not None and not path.is_file():
            return None
        return cls(url)

    def close(self) -> None:
        self.engine.dispose()

    def secret(self) -> bytes:
        """The signing secret every worker sharing this database uses: made by the first."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(META.c.value).where(META.c.name == "secret")).first()
            if row is not None:
                return bytes.fromhex(row[0])
        try:
            with self.engine.begin() as conn:
                conn.execute(META.insert().values(name="secret", value=secrets.token_hex(32)))
        except IntegrityError:  # another worker made it first: use theirs
            pass
        with self.engine.begin() as conn:
            value = conn.execute(sa.select(META.c.value).where(META.c.name == "secret")).scalar()
        return bytes.fromhex(value)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(FEEDBACK)).scalar())

    def add(
        self,
        row: NewFeedback,
        *,
        max_rows: int,
        per_client: int,
        window_s: float,
        now: float | None = None,
    ) -> int:
        """Store one row and return its id; StoreFull, RateLimited or Duplicate instead."""
        now = time.time() if now is None else now
        seen = np.ascontiguousarray(row.seen, dtype=np.uint8)
        if seen.shape != SHAPE:
            raise ValueError(f"seen must be {SHAPE}, not {seen.shape}")
        with self.engine.begin() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(FEEDBACK)).scalar()
            if count >= max_rows:
                raise StoreFull(count)
            recent = conn.execute(
                sa.select(sa.func.count())
                .select_from(FEEDBACK)
                .where(FEEDBACK.c.client == row.client)
                .where(FEEDBACK.c.created_at > int(now - window_s))
            ).scalar()
            if recent >= per_client:
                raise RateLimited(recent)
            try:
                result = conn.execute(
                    FEEDBACK.insert().values(
                        key=row.key,
                        created_at=int(now),
                        predicted_at=int(row.predicted_at),
                        client=row.client,
                        seen=seen.tobytes(),
                        answered=int(row.answered),
                        confidence=float(row.confidence),
                        label=None if row.label is None else int(row.label),
                        model_version=row.model_version,
                    )
                )
            except IntegrityError:
                raise Duplicate(row.key) from None
            return int(result.inserted_primary_key[0])

    def queue(self, below: float, limit: int) -> list[Queued]:
        """Stored inputs the model was unsure of (confidence < `below`) that no helper labelled
        yet: the ones without a label first, then the least confident."""
        t = FEEDBACK
        query = (
            sa.select(t.c.id, t.c.seen, t.c.answered, t.c.confidence, t.c.label, t.c.model_version)
            .where(t.c.confidence < below)
            .where(t.c.review_label.is_(None))
            .order_by(t.c.label.is_not(None), t.c.confidence, t.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Queued(
                id=r.id,
                seen=np.frombuffer(r.seen, np.uint8).reshape(SHAPE),
                answered=r.answered,
                confidence=r.confidence,
                label=r.label,
                model_version=r.model_version,
            )
            for r in rows
        ]

    def review(self, row_id: int, label: int, below: float, now: float | None = None) -> None:
        """A helper's label for a queued row (first one wins); NotFound if it is not queued."""
        now = time.time() if now is None else now
        t = FEEDBACK
        with self.engine.begin() as conn:
            done = conn.execute(
                t.update()
                .where(t.c.id == row_id)
                .where(t.c.confidence < below)
                .where(t.c.review_label.is_(None))
                .values(review_label=int(label), reviewed_at=int(now))
            )
            if done.rowcount != 1:
                raise NotFound(row_id)

    def export(self) -> dict[str, np.ndarray]:
        """Every labelled row, in a fixed order (stored time, then key), as arrays: the same
        database content gives the same arrays. The label is the helper's where there is one."""
        t = FEEDBACK
        query = (
            sa.select(
                t.c.key,
                t.c.created_at,
                t.c.seen,
                t.c.answered,
                t.c.confidence,
                t.c.label,
                t.c.review_label,
                t.c.model_version,
            )
            .where(sa.or_(t.c.label.is_not(None), t.c.review_label.is_not(None)))
            .order_by(t.c.created_at, t.c.key)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return export_arrays(rows)


# What the export holds per row (stage feedback writes them, prepare checks them).
EXPORT_KEYS = ("x", "y", "answered", "confidence", "reviewed", "model_version", "created_at", "key")


def export_arrays(rows: list) -> dict[str, np.ndarray]:
    n = len(rows)
    return {
        "x": np.frombuffer(b"".join(r.seen for r in rows), np.uint8).reshape(n, *SHAPE),
        "y": np.array(
            [r.review_label if r.review_label is not None else r.label for r in rows], np.uint8
        ),
        "answered": np.array([r.answered for r in rows], np.uint8),
        "confidence": np.array([r.confidence for r in rows], np.float32),
        "reviewed": np.array([r.review_label is not None for r in rows], bool),
        "model_version": np.array([r.model_version for r in rows], f"<U{MAX_VERSION}"),
        "created_at": np.array([r.created_at for r in rows], np.int64),
        "key": np.array([r.key for r in rows], "<U64"),
    }


def empty() -> dict[str, np.ndarray]:
    """What an empty or missing database exports."""
    return export_arrays([])


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
