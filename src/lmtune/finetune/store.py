"""Where the fine-tuning service keeps its state: uploaded files on disk, and files, jobs,
events and checkpoints in a database (SQLite by default, under $LMTUNE_HOME/service/).

SQLAlchemy Core, not an ORM: a handful of tables read and written as dicts. Every write is
its own transaction, so the HTTP server, its workers and a crashed worker's successor see a
consistent state; a worker claims a job with a conditional UPDATE that only one can win.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import sqlalchemy as sa

from lmtune.errors import UserError
from lmtune.home import lmtune_home

META = sa.MetaData()
FILES = sa.Table(
    "files", META,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
    sa.Column("purpose", sa.String(40), nullable=False),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
)
JOBS = sa.Table(
    "jobs", META,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
    sa.Column("seq", sa.BigInteger, nullable=False, index=True),  # first come, first served
    sa.Column("status", sa.String(24), nullable=False, index=True),
    sa.Column("request", sa.Text, nullable=False),   # the create request, as JSON
    sa.Column("settings", sa.Text, nullable=False),  # hyperparameters as chosen, as JSON
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger),
    sa.Column("estimated_finish", sa.BigInteger),
    sa.Column("trained_tokens", sa.BigInteger),
    sa.Column("fine_tuned_model", sa.String(256), index=True),
    sa.Column("error", sa.Text),                     # {code, message, param} as JSON
    sa.Column("result_files", sa.Text, nullable=False, default="[]"),
    sa.Column("run_dir", sa.String(1024), nullable=False),
    sa.Column("worker", sa.String(64)),
    sa.Column("heartbeat", sa.Float),
    sa.Column("wanted", sa.String(16)),              # "cancel" or "pause", asked by a client
)
EVENTS = sa.Table(
    "events", META,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.Text),
)
CHECKPOINTS = sa.Table(
    "checkpoints", META,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def service_home() -> Path:
    return lmtune_home() / "service"


class Store:
    def __init__(self, url: str | None = None, home: Path | None = None):
        # Uploaded files and runs live beside a SQLite database; a server database (shared
        # by workers on several machines) keeps them under $LMTUNE_HOME/service, which those
        # machines must share.
        sqlite_file = url.removeprefix("sqlite:///") if url and url.startswith("sqlite:///") \
            else None
        self.home = Path(home) if home else (Path(sqlite_file).parent if sqlite_file
                                             else service_home())
        self.home.mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{self.home / 'lmtune.db'}"
        sqlite = self.url.startswith("sqlite")
        try:
            # SQLite: one writer at a time; a busy database makes a writer wait, not fail.
            self.engine = sa.create_engine(self.url,
                                           connect_args={"timeout": 30} if sqlite else {})
            if sqlite:
                sa.event.listen(self.engine, "connect", _sqlite_wal)
            META.create_all(self.engine)
        except sa.exc.ArgumentError:
            raise UserError(f"--store {self.url!r} is not a database URL lmtune can use",
                            hint="e.g. sqlite:////path/lmtune.db or "
                                 "postgresql+psycopg://user@host/dbname") from None
        except ModuleNotFoundError as e:
            raise UserError(f"--store {self.url}: its database driver ({e.name}) is not "
                            f"installed", hint="for PostgreSQL: pip install "
                                               "'psycopg[binary]'") from None
        except sa.exc.OperationalError as e:
            raise UserError(f"--store {self.url}: the database cannot be opened "
                            f"({str(e.orig).strip().splitlines()[0]})",
                            hint="check that the server runs and the URL names it") from None

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    # --- files ------------------------------------------------------------------------------

    def add_file(self, row: dict) -> dict:
        with self.engine.begin() as db:
            db.execute(FILES.insert().values(**row))
        return row

    def file(self, file_id: str, owner: str) -> dict | None:
        with self.engine.connect() as db:
            row = db.execute(FILES.select().where(FILES.c.id == file_id,
                                                  FILES.c.owner == owner)).mappings().first()
        return dict(row) if row else None

    def files(self, owner: str, purpose: str | None = None) -> list[dict]:
        query = FILES.select().where(FILES.c.owner == owner)
        if purpose:
            query = query.where(FILES.c.purpose == purpose)
        with self.engine.connect() as db:
            rows = db.execute(query.order_by(FILES.c.created_at.desc())).mappings().all()
        return [dict(r) for r in rows]

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self.engine.begin() as db:
            done = db.execute(FILES.delete().where(FILES.c.id == file_id,
                                                   FILES.c.owner == owner))
        return done.rowcount == 1

    # --- jobs -------------------------------------------------------------------------------

    def add_job(self, row: dict) -> dict:
        with self.engine.begin() as db:
            last = db.execute(sa.select(sa.func.max(JOBS.c.seq))).scalar() or 0
            db.execute(JOBS.insert().values(**row, seq=last + 1))
        return self.job(row["id"])

    def job(self, job_id: str, owner: str | None = None) -> dict | None:
        query = JOBS.select().where(JOBS.c.id == job_id)
        if owner is not None:
            query = query.where(JOBS.c.owner == owner)
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
        return dict(row) if row else None

    def jobs(self, owner: str, after: str | None, limit: int) -> list[dict]:
        """Newest first, as OpenAI lists them; `after` is the last id of the previous page."""
        query = JOBS.select().where(JOBS.c.owner == owner)
        if after:
            anchor = self.job(after, owner)
            query = query.where(JOBS.c.seq < (anchor["seq"] if anchor else 0))
        with self.engine.connect() as db:
            rows = db.execute(query.order_by(JOBS.c.seq.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def jobs_with_status(self, status: str) -> list[dict]:
        with self.engine.connect() as db:
            rows = db.execute(JOBS.select().where(JOBS.c.status == status)
                              .order_by(JOBS.c.seq)).mappings().all()
        return [dict(r) for r in rows]

    def waiting(self, owner: str) -> int:
        """Jobs of `owner` not yet training: validating or queued."""
        with self.engine.connect() as db:
            return db.execute(sa.select(sa.func.count()).where(
                JOBS.c.owner == owner,
                JOBS.c.status.in_(("validating_files", "queued")))).scalar()

    def model_job(self, model: str) -> dict | None:
        """The succeeded job whose fine-tuned model is `model`."""
        with self.engine.connect() as db:
            row = db.execute(JOBS.select().where(JOBS.c.fine_tuned_model == model,
                                                 JOBS.c.status == "succeeded")).mappings().first()
        return dict(row) if row else None

    def succeeded(self, owner: str | None = None) -> list[dict]:
        query = JOBS.select().where(JOBS.c.status == "succeeded")
        if owner is not None:
            query = query.where(JOBS.c.owner == owner)
        with self.engine.connect() as db:
            return [dict(r) for r in db.execute(query.order_by(JOBS.c.seq)).mappings().all()]

    def update_job(self, job_id: str, *, when: dict | None = None, **values) -> bool:
        """Set `values`; with `when`, only if those columns still hold those values (the
        compare-and-set that keeps two workers from taking one job)."""
        query = JOBS.update().where(JOBS.c.id == job_id)
        for name, value in (when or {}).items():
            query = query.where(JOBS.c[name] == value)
        with self.engine.begin() as db:
            return db.execute(query.values(**values)).rowcount == 1

    def claim(self, worker: str) -> dict | None:
        """The oldest queued job, now this worker's; None when there is none."""
        with self.engine.connect() as db:
            ids = db.execute(sa.select(JOBS.c.id).where(JOBS.c.status == "queued")
                             .order_by(JOBS.c.seq).limit(5)).scalars().all()
        for job_id in ids:
            if self.update_job(job_id, when={"status": "queued"}, status="running",
                               worker=worker, heartbeat=time.time()):
                return self.job(job_id)
        return None

    def requeue_abandoned(self, older_than: float) -> list[str]:
        """Running jobs whose worker stopped beating (it died): back to the queue, to resume
        from their last checkpoint."""
        cutoff = time.time() - older_than
        with self.engine.connect() as db:
            ids = db.execute(sa.select(JOBS.c.id).where(
                JOBS.c.status == "running", JOBS.c.heartbeat < cutoff)).scalars().all()
        return [i for i in ids if self.update_job(i, when={"status": "running"},
                                                  status="queued", worker=None)]

    # --- events and checkpoints -------------------------------------------------------------

    def add_event(self, job_id: str, message: str, *, level: str = "info",
                  type: str = "message", data: dict | None = None) -> None:
        with self.engine.begin() as db:
            db.execute(EVENTS.insert().values(
                id=new_id("ftevent"), job_id=job_id, created_at=int(time.time()), level=level,
                type=type, message=message, data=json.dumps(data) if data else None))

    def events(self, job_id: str, after: str | None, limit: int) -> list[dict]:
        """Newest first (OpenAI's order); `after`: the id of the last event already seen."""
        query = EVENTS.select().where(EVENTS.c.job_id == job_id)
        if after:
            with self.engine.connect() as db:
                anchor = db.execute(sa.select(EVENTS.c.seq).where(EVENTS.c.id == after)).scalar()
            query = query.where(EVENTS.c.seq < (anchor or 0))
        with self.engine.connect() as db:
            rows = db.execute(query.order_by(EVENTS.c.seq.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def events_since(self, job_id: str, seq: int, limit: int) -> list[dict]:
        """Oldest first: the events after `seq`, for a page that follows the job (the
        newest `limit` of them when more arrived)."""
        query = (EVENTS.select().where(EVENTS.c.job_id == job_id, EVENTS.c.seq > seq)
                 .order_by(EVENTS.c.seq.desc()).limit(limit))
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return [dict(r) for r in reversed(rows)]

    def add_checkpoint(self, job_id: str, step: int, metrics: dict, path: str) -> None:
        with self.engine.begin() as db:
            db.execute(CHECKPOINTS.insert().values(
                id=new_id("ftckpt"), job_id=job_id, step=step, created_at=int(time.time()),
                metrics=json.dumps(metrics), path=path))

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> list[dict]:
        query = CHECKPOINTS.select().where(CHECKPOINTS.c.job_id == job_id)
        with self.engine.connect() as db:
            rows = db.execute(query.order_by(CHECKPOINTS.c.step.desc())).mappings().all()
        rows = [dict(r) for r in rows]
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return rows[:limit]


def _sqlite_wal(connection, _record) -> None:
    # WAL: readers (the HTTP server) never wait for the writer (a worker logging events).
    connection.execute("PRAGMA journal_mode=WAL")
