"""The write-ahead log of a run: every record reaches a local append-only file first, and
MLflow in batches from there.

A run's log folder (`<store's log root>/<run id>/`):

    log     one JSON list a line, appended with one write a step: a record is kept once its
            line is written, whatever happens to the process afterwards (kill -9 included)
    sent    the byte offset of `log` up to which the store confirmed the records (replaced
            atomically once a burst of sends empties the queue, and at least every MARK_EVERY
            seconds within one, rather than after every store call)
    owner   flock-ed by the process that owns the run (released by the kernel when it dies),
            holding "host pid"
    files/  artifacts staged for upload (figures, arrays, checkpoints) until confirmed

Records: ["m", key, value, timestamp_ms, step] metric, ["t", key, value] tag,
["p", key, value] param, ["a", file under files/, artifact dir or null] artifact,
["d", name, digest, source_type, source, schema, profile] dataset input,
["s", status, end_time_ms] the run's final status.

Sending is idempotent, so a record confirmed by the store but not yet marked sent is
harmless to send again: MLflow's SQL store drops a metric point equal in key, value,
timestamp and step to one it has; tags, params, artifacts and statuses are set to the
same values. The folder goes away once its final status is confirmed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections import deque
from itertools import islice
from pathlib import Path

MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
MAX_OTHERS = 32  # artifacts and dataset inputs in one window of a sender
SEND_EVERY = 1.0  # seconds between a process's batches while training (or sooner, at FLUSH_AT records)
FLUSH_AT = 2000
HEARTBEAT_SECONDS = 60.0
MARK_EVERY = 0.2  # seconds between updates of a log's `sent` while its queue is not empty
# store calls in flight from this process's senders at once. MLflow's SQLAlchemy pool holds 15
# connections and a log_batch can take two; with a sender per run (64 members of a batched
# sweep) unbounded senders exhausted the pool and waited on each other for good.
STORE_CALLS = threading.BoundedSemaphore(4)
# the live senders of this process: each waits SEND_EVERY × their number between batches, so a
# process sends about one batch a second however many runs it trains (a batch of 600 metrics
# costs the SQL store ~85 ms, thirty batches of 20 ~340 ms; and while 2 OpenMP threads train,
# every wake-up of a sender stalls them)
LIVE: set = set()
HOST = socket.gethostname()

# store errors worth waiting out: SQLite busy, a server down or restarting, network trouble
TRANSIENT = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "database schema has changed",
    "Online migration expected to match one row",
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "Connection reset",
    "RemoteDisconnected",
    "timed out",
    "Read timed out",
    "TEMPORARILY_UNAVAILABLE",
    "503",
    "502",
    "504",
    "Name or service not known",
    # two jobs logging the same dataset at once: MLflow's insert races; again, it finds the row
    "UNIQUE constraint failed: datasets",
    "duplicate key value violates unique constraint",
)


def is_transient(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, (ConnectionError, TimeoutError)) or any(t in str(e) for t in TRANSIENT):
            return True
        e = e.__cause__ or e.__context__
    return False


def describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def encode(record) -> bytes:
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class RunLog:
    """The files of one run's log; the owner appends, anyone may replay once the owner is gone."""

    def __init__(self, root: Path, run_id: str):
        self.dir = Path(root) / run_id
        self.run_id = run_id
        self.path = self.dir / "log"
        self.files = self.dir / "files"
        self._fd = None
        self._owner_fd = None
        self.size = 0

    # -- ownership -----------------------------------------------------------------
    def acquire(self) -> str | None:
        """Own the run's log (a non-blocking flock); None on success, else who owns it."""
        self.files.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "owner", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{HOST} pid {os.getpid()}".encode(), 0)
        self._owner_fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # drops the flock
            self._owner_fd = None

    # -- the owner's side ------------------------------------------------------------
    def open_append(self) -> int:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self._fd).st_size
        return self.size

    def append(self, data: bytes) -> int:
        """Write data (whole lines) with one call; returns the log's size after it."""
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)
        return self.size

    def stage(self, name: str) -> Path:
        """A path under files/ for an artifact this run will upload."""
        p = self.files / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # -- both sides ------------------------------------------------------------------
    def sent(self) -> int:
        try:
            return int((self.dir / "sent").read_text() or 0)
        except (OSError, ValueError):
            return 0

    def mark_sent(self, offset: int) -> None:
        tmp = self.dir / f"sent.{os.getpid()}.tmp"
        tmp.write_text(str(offset))
        os.replace(tmp, self.dir / "sent")

    def pending(self) -> list[tuple[int, list]]:
        """(end offset, record) of every unconfirmed complete line."""
        start = self.sent()
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        out, pos = [], start
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a line cut by a crash: never reached the log
            pos += len(line)
            try:
                out.append((pos, json.loads(line)))
            except ValueError:
                continue
        return out

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sender:
    """Sends a run's records to the store, in order and in batches, from the log's tail.

    Live (a thread beside training): `push` hands it what was appended; it sends every
    SEND_EVERY seconds, retries a store that is busy or unreachable for as long as the
    run lives (training never waits for it), and stops at a permanent error (`error`),
    leaving the rest in the log. Replay: `drain(deadline)` in the caller's thread.
    """

    def __init__(self, client, log: RunLog, heartbeat: bool = False):
        self.client = client
        self.log = log
        self.queue: deque[tuple[int, list]] = deque()
        self.error: BaseException | None = None  # a permanent failure: nothing after it is sent
        self.last_failure: str | None = None  # the latest transient one
        self.seconds = 0.0  # time spent in store calls
        self._cond = threading.Condition()
        self._thread = None
        self._stop = False
        self._urgent = False
        self._heartbeat = heartbeat
        self._beat = time.monotonic()
        self._marked = time.monotonic()  # when `sent` was last written

    # -- live ------------------------------------------------------------------------
    def start(self) -> None:
        LIVE.add(self)
        self._thread = threading.Thread(target=self._loop, name=f"fpdsl-sender-{self.log.run_id[:8]}", daemon=True)
        self._thread.start()

    def push(self, items) -> None:
        with self._cond:
            self.queue.extend(items)
            if len(self.queue) >= FLUSH_AT:
                self._cond.notify()

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything pushed is confirmed; False on timeout or permanent error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify()
            while self.queue and self.error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=0.05 if left is None else min(left, 0.05))
            self._urgent = False
        return self.error is None

    def stop(self) -> None:
        LIVE.discard(self)
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        delay = 0.0  # back-off after a transient failure
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._urgent or len(self.queue) >= FLUSH_AT,
                                    timeout=max(delay, SEND_EVERY * max(1, len(LIVE))))
                if self._stop:
                    return
            try:
                while self.queue and self.error is None and not self._stop:
                    self._send_some()
                delay = 0.0
            except Exception as e:
                if is_transient(e):
                    self.last_failure = describe(e)
                    delay = min(10.0, max(0.2, delay * 2))
                else:
                    self.error = e
            with self._cond:
                self._cond.notify_all()
            self._maybe_beat()

    def _maybe_beat(self) -> None:
        if self._heartbeat and time.monotonic() - self._beat > HEARTBEAT_SECONDS and self.error is None:
            self._beat = time.monotonic()
            try:
                from mlflow.entities import RunTag

                with STORE_CALLS:
                    self.client.log_batch(self.log.run_id, tags=[RunTag("fpdsl.heartbeat", str(int(time.time())))])
            except Exception:
                pass

    # -- replay ----------------------------------------------------------------------
    def drain(self, deadline: float) -> bool:
        """Send everything unconfirmed in the log (another process's, or this one's after it
        stopped); True when nothing is left. Transient errors are retried until deadline."""
        self.queue.extend(self.log.pending())
        delay = 0.1
        while self.queue:
            try:
                self._send_some()
                delay = 0.1
            except Exception as e:
                if not is_transient(e):
                    self.error = e
                    return False
                self.last_failure = describe(e)
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)
                delay = min(5.0, delay * 2)
        return True

    # -- sending -----------------------------------------------------------------------
    def _send_some(self) -> None:
        """One store call: the next run of metrics/tags/params as one log_batch, or the next
        artifact, dataset or status. Confirmed records leave the queue and the log's tail."""
        with STORE_CALLS:
            self._send_some_now()

    def _send_some_now(self) -> None:
        """The next window of the queue: its metrics, params and tags (up to MLflow's batch
        limits) as one log_batch, then its artifacts and dataset inputs in their order; a
        status alone, once everything before it is confirmed. (Sent in queue order, a run's
        step-indexed images split its metrics into a log_batch per image, ~5 ms of fixed cost
        each.) A window is confirmed whole: after a failure it is sent again, which is harmless."""
        from mlflow.entities import Metric, Param, RunTag

        with self._cond:
            head = list(islice(self.queue, 0, MAX_ENTITIES))
        t0 = time.perf_counter()
        run_id = self.log.run_id
        metrics, params, tags, others, n, end = [], {}, {}, [], 0, 0
        for end_off, rec in head:
            k = rec[0]
            if (k == "s" and n) or len(others) >= MAX_OTHERS or (k == "m" and len(metrics) >= MAX_METRICS) or (
                    k == "p" and len(params) >= MAX_PARAMS) or (k == "t" and len(tags) >= MAX_TAGS) or (
                    len(metrics) + len(params) + len(tags) >= MAX_ENTITIES):
                break
            if k == "m":
                metrics.append(Metric(rec[1], float(rec[2]), int(rec[3]), int(rec[4])))
            elif k == "p":
                params[rec[1]] = rec[2]
            elif k == "t":
                tags[rec[1]] = rec[2]  # the latest value of a tag in the window wins
            else:
                others.append(rec)
            n, end = n + 1, end_off
            if k == "s":
                break
        if metrics or params or tags:
            self.client.log_batch(
                run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
        for rec in others:
            kind = rec[0]
            if kind == "a":
                path = self.log.files / rec[1]
                if path.exists():
                    self.client.log_artifact(run_id, str(path), rec[2])
            elif kind == "d":
                from mlflow.entities import Dataset, DatasetInput

                ds = Dataset(name=rec[1], digest=rec[2], source_type=rec[3], source=rec[4], schema=rec[5], profile=rec[6])
                self.client.log_inputs(run_id, datasets=[DatasetInput(dataset=ds, tags=[])])
            elif kind == "s":
                self.client.set_terminated(run_id, status=rec[1], end_time=rec[2])
        self.seconds += time.perf_counter() - t0
        with self._cond:
            for _ in range(n):
                _, rec = self.queue.popleft()
                if rec[0] == "a":
                    _unlink(self.log.files / rec[1])  # sent: a replay before the mark skips it
            drained = not self.queue
        now = time.monotonic()
        if drained or now - self._marked >= MARK_EVERY:  # what a replay would send again is idempotent
            self.log.mark_sent(end)
            self._marked = now


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


def replay(client, log: RunLog, deadline: float) -> tuple[bool, BaseException | None]:
    """Send what a gone owner left unconfirmed in the log: (everything sent, permanent error)."""
    sender = Sender(client, log)
    return sender.drain(deadline), sender.error
