"""An MLflow store, opened with bounded waits, and the recovery every fpdsl start does on it.

Many jobs may write into one store at once (a joblib or submitit grid into the embedded
SQLite file). SQLite lets one writer in at a time and answers "database is locked" at
once when a reading transaction wants to write while another holds the write lock;
store calls therefore retry busy errors with backoff. A new SQLite store is created by
one process at a time (a file lock), so jobs that start together do not race through
MLflow's migrations. A tracking server that does not answer within `timeout` seconds
is refused at start-up; during a run the write-ahead log (fpdsl.wal) keeps training
independent of the store.

Recovery (`Store.recover`, at every start that opens the store): logs left by processes
that are gone are replayed, then runs still RUNNING whose process is gone are marked
FAILED with the tag `fpdsl.crashed`.
"""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from fpdsl.wal import HOST, RunLog, describe, replay

BUSY_SECONDS = 300.0  # wait this long for a SQLite store another process holds locked
STALE_SECONDS = 600.0  # a run on another host without a heartbeat this long has crashed
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's classic ML view
_RECOVERED: set[str] = set()  # stores this process has recovered (Store.recover_once)


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
    return None


def default_artifact_location(uri: str) -> str | None:
    """For the embedded SQLite store, artifacts live on disk beside the database file."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db else None


def log_root(uri: str) -> Path:
    """Where runs of this store keep their write-ahead logs: beside a SQLite file, else
    in the user's cache (FPDSL_LOG_DIR overrides both)."""
    if os.environ.get("FPDSL_LOG_DIR"):
        base = Path(os.environ["FPDSL_LOG_DIR"])
    else:
        db = sqlite_path(uri)
        if db is not None:
            return db.parent / "fpdsl-log"
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fpdsl" / "log"
    return base / hashlib.sha1(uri.encode()).hexdigest()[:12]


def retrying(fn, *args, deadline: float = BUSY_SECONDS, on_retry=None, **kwargs):
    """fn(*args, **kwargs), again after a growing random pause while SQLite is busy."""
    start, attempt = time.monotonic(), 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _busy(e) or time.monotonic() - start > deadline:
                raise
            attempt += 1
            if on_retry is not None:
                on_retry()
            time.sleep(random.uniform(0.5, 1.0) * min(2.0, 0.01 * 2**attempt))  # full jitter


def _busy(e) -> bool:
    text = []
    while e is not None:
        text.append(str(e))
        e = e.__cause__ or e.__context__
    return any(t in s for s in text for t in ("database is locked", "database table is locked",
                                             "database schema is locked", "database schema has changed",
                                             "Online migration expected to match one row"))


class RetryingClient:
    """An MlflowClient whose every call retries while a SQLite store is busy."""

    def __init__(self, client):
        self._client = client
        self.retries = 0

    def _count(self):
        self.retries += 1

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return retrying(attr, *args, on_retry=self._count, **kwargs)

        return call


@contextmanager
def store_init_lock(db: Path):
    """Only one process on this machine creates a given SQLite store at a time."""
    from filelock import FileLock

    key = hashlib.md5(str(db).encode(), usedforsecurity=False).hexdigest()[:16]
    with FileLock(os.path.join(tempfile.gettempdir(), f"fpdsl-store-{key}.lock"), timeout=BUSY_SECONDS):
        yield


def _has_schema(db: Path) -> bool:
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30) as con:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def quiet_mlflow(timeout: float) -> None:
    """MLflow's HTTP calls bounded by timeout and not retried by MLflow itself (fpdsl's log
    retries what matters); its INFO lines (database migrations) kept off the terminal."""
    import logging

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)


class StoreError(RuntimeError):
    """The store cannot be used; the message names tracking.uri and what to do."""


class Store:
    def __init__(self, uri: str, timeout: float = 15.0, create: bool = True):
        self.uri = uri
        db = sqlite_path(uri)
        if not create and db is not None and not db.exists():
            raise StoreError(f"resume: there is no store at {db}; point tracking.uri at the store that holds the run")
        self.timeout = timeout
        self.log_root = log_root(uri)
        quiet_mlflow(timeout)
        t = time.perf_counter()
        self.client = self._open()
        self.open_seconds = time.perf_counter() - t

    def _open(self) -> RetryingClient:
        from mlflow.tracking import MlflowClient

        uri = self.uri
        if uri.startswith(("http://", "https://")):
            _check_server(uri, self.timeout)
        db = sqlite_path(uri)
        if db is not None:
            _check_writable(db)
            with store_init_lock(db):  # whoever finds no schema creates it while the others wait
                if not _has_schema(db):
                    _create_sqlite(db, uri)
        client = RetryingClient(retrying(MlflowClient, tracking_uri=uri))
        if uri.startswith(("http://", "https://")):
            try:  # the server answers /health; does it answer a real call in time?
                client.search_experiments(max_results=1)
            except Exception as e:
                raise StoreError(
                    f"tracking.uri: the MLflow server at {uri} did not answer in {self.timeout:g} s "
                    f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__}); "
                    "check the server or use tracking.uri=sqlite:///mlflow.db"
                ) from None
        return client

    # -- experiments -----------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=default_artifact_location(self.uri),
                                                 tags=EXPERIMENT_KIND)
        except Exception:  # another job created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def run_log(self, run_id: str) -> RunLog:
        return RunLog(self.log_root, run_id)

    # -- recovery ----------------------------------------------------------------------
    def recover_once(self) -> list[str]:
        """`recover`, the first time this process asks for this store (a sweep's jobs after the
        first would only find this process's own runs, and each one's search cost a query)."""
        if self.uri in _RECOVERED:
            return []
        _RECOVERED.add(self.uri)
        return self.recover()

    def recover(self) -> list[str]:
        """Replay logs whose owner is gone, then mark RUNNING runs whose process is gone as
        FAILED (tag `fpdsl.crashed`). Returns one line per run it changed."""
        notes = []
        deadline = time.monotonic() + self.timeout
        if self.log_root.is_dir():
            for d in sorted(self.log_root.iterdir()):
                if not d.is_dir() or not (d / "owner").exists():
                    continue
                log = RunLog(self.log_root, d.name)
                if log.acquire() is not None:
                    continue  # its owner is alive
                try:
                    done, error = replay(self.client, log, deadline)
                    status = self._status(d.name)
                    if status == "RUNNING":
                        self._mark_crashed(d.name, "its process is gone; its log was replayed")
                        status = "FAILED"
                        notes.append(f"run {d.name}: its process is gone; marked FAILED (crashed) after replaying its log")
                    elif done:
                        notes.append(f"run {d.name}: sent what its log still held (status {status})")
                    if done and status is not None:
                        log.remove()
                    elif not done:
                        why = describe(error) if error is not None else "the store did not answer"
                        notes.append(f"run {d.name}: its log could not be sent yet ({why}); kept in {d}")
                except Exception as e:  # the store went away meanwhile: the log stays for next time
                    notes.append(f"run {d.name}: recovery stopped ({describe(e)}); its log stays in {d}")
                finally:
                    log.release()
        for run in self._running():
            tags = run.data.tags
            if not _gone(tags):
                continue
            if self.run_log(run.info.run_id).dir.exists():
                continue  # a live owner's log (acquire failed above), or one that could not be sent
            self._mark_crashed(run.info.run_id, _why_gone(tags))
            notes.append(f"run {run.info.run_id} ({run.info.run_name}): {_why_gone(tags)}; marked FAILED (crashed)")
        return notes

    def _status(self, run_id: str) -> str | None:
        try:
            return self.client.get_run(run_id).info.status
        except Exception:
            return None

    def _running(self):
        try:
            exps = [e.experiment_id for e in self.client.search_experiments(max_results=50000)]
            if not exps:
                return []
            return self.client.search_runs(exps, filter_string="attributes.status = 'RUNNING'", max_results=50000)
        except Exception:
            return []

    def _mark_crashed(self, run_id: str, why: str) -> None:
        from mlflow.entities import RunTag

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.client.log_batch(run_id, tags=[RunTag("fpdsl.crashed", f"{why} (found by pid {os.getpid()} on {HOST} at {stamp})"),
                                            RunTag("fpdsl.error", f"crashed: {why}")])
        self.client.set_terminated(run_id, status="FAILED")


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_tags() -> dict[str, str]:
    """Who runs this run: checked by crash detection and by a second resume."""
    pid = os.getpid()
    return {"fpdsl.host": HOST, "fpdsl.pid": str(pid), "fpdsl.pid_start": process_start(pid) or "",
            "fpdsl.heartbeat": str(int(time.time()))}


def alive(tags: dict) -> bool | None:
    """Whether the process named by the run's owner tags still runs (None: no such tags)."""
    if "fpdsl.host" not in tags:
        return None
    if tags["fpdsl.host"] != HOST:
        beat = float(tags.get("fpdsl.heartbeat") or 0)
        return time.time() - beat < STALE_SECONDS
    try:
        pid = int(tags.get("fpdsl.pid", ""))
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    start = tags.get("fpdsl.pid_start")
    return not start or process_start(pid) == start


def _gone(tags) -> bool:
    return alive(tags) is False


def _why_gone(tags) -> str:
    if tags.get("fpdsl.host") != HOST:
        return f"no heartbeat from {tags.get('fpdsl.host')} for more than {STALE_SECONDS:g} s"
    return f"process {tags.get('fpdsl.pid')} on {HOST} is gone"


def _template() -> Path:
    import mlflow

    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fpdsl"
    return base / f"empty-store-mlflow-{mlflow.__version__}.db"


def _create_sqlite(db: Path, uri: str) -> None:
    """A new SQLite store. MLflow builds its schema by running its migrations, about 1.5 s; the
    first store made on a machine is copied, still empty, as a template for this MLflow
    version, and later stores start as copies of it (its Default experiment's artifact
    location set as MLflow sets it: ./mlruns/0 of the current folder)."""
    import shutil
    import sqlite3

    from mlflow.tracking import MlflowClient

    template = _template()
    if _has_schema(template):
        from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

        tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
        try:
            shutil.copyfile(template, tmp)
            with sqlite3.connect(tmp) as con:
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                            (append_to_uri_path(resolve_uri_if_local("./mlruns"), "0"),))
            con.close()
            os.replace(tmp, db)
            return
        except (OSError, sqlite3.Error):
            tmp.unlink(missing_ok=True)
    retrying(MlflowClient, tracking_uri=uri)
    try:  # keep the empty store for next time
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.new")
        with sqlite3.connect(db) as src, sqlite3.connect(tmp) as dst:
            src.backup(dst)
        src.close()
        dst.close()
        os.replace(tmp, template)
    except (OSError, sqlite3.Error):
        pass


def _check_server(uri: str, timeout: float) -> None:
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=min(timeout, 5)).close()
    except Exception as e:
        reason = getattr(e, "reason", e)
        raise StoreError(
            f"tracking.uri: no MLflow server answers at {uri} ({reason}); start one (mlflow server) "
            "or use tracking.uri=sqlite:///mlflow.db"
        ) from None


def _check_writable(db: Path) -> None:
    folder = db.parent
    if not folder.exists():
        raise StoreError(f"tracking.uri: the folder {folder} does not exist; create it or point tracking.uri elsewhere")
    writable = os.access(db, os.W_OK) if db.exists() else _can_create(folder)
    if not writable:
        raise StoreError(f"tracking.uri: {db if db.exists() else folder} is read-only; use a writable place, "
                         "e.g. tracking.uri=sqlite:///$HOME/mlflow.db")


def _can_create(folder: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fpdsl-probe-"):
            return True
    except OSError:
        return False

