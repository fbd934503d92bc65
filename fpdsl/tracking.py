"""One run's record in MLflow, written ahead to a local log (fpdsl.wal).

Every metric point, tag, param, artifact and the final status is first appended to the
run's log (one write a step, a few µs), then sent to the store in batches by a thread
beside training. A store that is slow, locked or down never holds training up; what it
did not confirm stays in the log and is sent at the end of the run, on resume, by the
next fpdsl start on the same store, or by `fpdsl sync`.
"""
from __future__ import annotations

import hashlib
import math
import shutil
import time
import uuid
from pathlib import Path

from fpdsl.wal import RunLog, Sender, describe, encode

TAG_VALUE_MAX = 7900
PARAM_VALUE_MAX = 6000


class OwnedElsewhere(RuntimeError):
    pass


class Tracker:
    def __init__(self, store, run_id: str, log: RunLog):
        self.store = store
        self.client = store.client
        self.run_id = run_id
        self.log = log
        log.open_append()
        self.sender = Sender(self.client, log, heartbeat=True)
        self.sender.start()
        self._lines: list[bytes] = []
        self._records: list[list] = []
        self.seconds = 0.0  # time spent in this object's calls on the training thread
        self.figure_seconds = 0.0  # drawing figures
        self.points = 0  # metric points logged
        self.images = 0  # step-indexed images logged

    # -- a run's beginning -------------------------------------------------------------
    @classmethod
    def create(cls, store, experiment_id: str, run_name: str, tags: dict) -> "Tracker":
        run = store.client.create_run(experiment_id, run_name=run_name, tags={k: _tag(v) for k, v in tags.items()})
        log = store.run_log(run.info.run_id)
        holder = log.acquire()
        assert holder is None, holder  # a new run id: nobody else has it
        return cls(store, run.info.run_id, log)

    @classmethod
    def reopen(cls, store, run_id: str, tags: dict) -> "Tracker":
        """Take over an existing run (resume): refused while another live process owns it."""
        from fpdsl.store import alive

        log = store.run_log(run_id)
        holder = log.acquire()
        if holder is not None:
            raise OwnedElsewhere(f"{holder} is recording it now")
        run = store.client.get_run(run_id)
        if run.info.status == "RUNNING" and alive(run.data.tags):
            log.release()
            t = run.data.tags
            raise OwnedElsewhere(f"{t.get('fpdsl.host')} pid {t.get('fpdsl.pid')} is recording it now")
        from fpdsl.wal import replay

        replay(store.client, log, time.monotonic() + store.timeout)  # what an earlier attempt left
        store.client.update_run(run_id, status="RUNNING")
        tracker = cls(store, run_id, log)
        tracker.set_tags(tags)
        tracker.commit()
        return tracker

    # -- records -------------------------------------------------------------------------
    def _add(self, record: list) -> None:
        self._lines.append(encode(record))
        self._records.append(record)

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Points at this step; ±inf and NaN go to MLflow as NaN (MLflow would show ±inf as ±1.8e308)."""
        t = time.perf_counter()
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            self._add(["m", k, v if math.isfinite(v) else math.nan, ts, int(step)])
        self.points += len(metrics)
        self.seconds += time.perf_counter() - t

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self._add(["t", k, _tag(v)])

    def log_params(self, params: dict) -> None:
        for k, v in params.items():
            self._add(["p", k, str(v)[:PARAM_VALUE_MAX]])

    def log_input(self, name: str, digest: str, source: str, schema: str, profile: str) -> None:
        self._add(["d", name, digest, "code", source, schema, profile])

    def log_file(self, path: str | Path, artifact_dir: str | None = None, name: str | None = None) -> None:
        """A copy of a local file as an artifact (staged in the log's folder until sent)."""
        path = Path(path)
        staged = self._staged(artifact_dir, name or path.name)
        shutil.copyfile(path, staged)
        self._add(["a", str(staged.relative_to(self.log.files)), artifact_dir])

    def log_dir(self, folder: str | Path, artifact_dir: str) -> None:
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                rel = f.relative_to(folder).parent.as_posix()
                self.log_file(f, artifact_dir if rel == "." else f"{artifact_dir}/{rel}")

    def staged_path(self, artifact_dir: str | None, name: str) -> Path:
        """A path to write an artifact into; `add_staged` then logs it."""
        return self._staged(artifact_dir, name)

    def add_staged(self, path: Path, artifact_dir: str | None) -> None:
        self._add(["a", str(Path(path).relative_to(self.log.files)), artifact_dir])

    def _staged(self, artifact_dir, name) -> Path:
        # a unique folder per staged file: two artifacts of one name never overwrite each other
        sub = f"{len(self._records)}-{uuid.uuid4().hex[:6]}"
        return self.log.stage(f"{sub}/{name}")

    def log_text(self, text: str, name: str) -> None:
        p = Path(name)
        staged = self._staged(p.parent.as_posix() if p.parent.name else None, p.name)
        staged.write_text(text)
        self.add_staged(staged, p.parent.as_posix() if p.parent.name else None)

    def log_figure(self, fig, name: str, formats=("png",), dpi: int = 100) -> None:
        """A matplotlib Figure as name.<format> for each format (png, pdf, svg)."""
        from fpdsl.figures import save

        t = time.perf_counter()
        p = Path(name)
        folder = p.parent.as_posix() if p.parent.name else None
        for fmt in formats:
            staged = self._staged(folder, f"{p.stem}.{fmt}")
            save(fig, staged, dpi)
            self.add_staged(staged, folder)
        self.figure_seconds += time.perf_counter() - t

    def log_image(self, key: str, step: int, image) -> None:
        """A step-indexed image (MLflow's image chart, `mlflow.log_image(key=..., step=...)`),
        written under the names MLflow gives them; a replay rewrites the same files."""
        from mlflow.tracking.multimedia import compress_image_size  # MLflow's own thumbnail
        from PIL import Image

        t = time.perf_counter()
        img = image if isinstance(image, Image.Image) else Image.fromarray(image)
        ts = int(time.time() * 1000)
        stem = f"{key.replace('/', '~')}+step+{int(step)}+timestamp+{ts}+" + str(
            uuid.UUID(hashlib.md5(f"{self.run_id}/{key}/{step}".encode()).hexdigest()))
        full = self._staged("images", stem + ".png")
        img.save(full)
        self.add_staged(full, "images")
        small = self._staged("images", stem + "+compressed.webp")
        compress_image_size(img).save(small, lossless=True, method=0)  # 0.25 ms against 1 ms (lossy, method 4)
        self.add_staged(small, "images")
        if not self.images:  # MLflow's flag for its image chart, once a run
            self._add(["t", "mlflow.loggedImages", "True"])
        self.images += 1
        self.figure_seconds += time.perf_counter() - t

    # -- writing -------------------------------------------------------------------------
    def commit(self) -> None:
        """Append what was added since the last call to the log (one write), and hand it to
        the sender. Called once a step by the recorder."""
        if not self._lines:
            return
        t = time.perf_counter()
        start = self.log.size
        data = b"".join(self._lines)
        self.log.append(data)
        items, pos = [], start
        for line, rec in zip(self._lines, self._records):
            pos += len(line)
            items.append((pos, rec))
        self._lines, self._records = [], []
        self.sender.push(items)
        self.seconds += time.perf_counter() - t

    def flush(self, timeout: float | None) -> bool:
        """Everything committed confirmed by the store (False: timed out or a permanent error)."""
        self.commit()
        t = time.perf_counter()
        ok = self.sender.flush(timeout)
        self.seconds += time.perf_counter() - t
        return ok

    @property
    def error(self) -> BaseException | None:
        return self.sender.error

    def close(self, status: str, timeout: float) -> tuple[bool, str | None]:
        """The final status, once everything before it is confirmed.

        Returns (confirmed, trouble): confirmed when the store has the whole record and the
        status; otherwise trouble says why, and the log keeps the rest for a later replay."""
        trouble = None
        ok = self.flush(timeout)
        if not ok and self.error is not None:
            # a write the store refused (a full disk, a bad value): the run cannot be FINISHED
            trouble = f"the store refused a write: {describe(self.error)}"
            status = "FAILED" if status == "FINISHED" else status
            self._direct_status(status, trouble)
        self._add(["s", status, int(time.time() * 1000)])
        if ok:
            ok = self.flush(timeout)
        self.sender.stop()
        if ok:
            self.log.remove()
        else:
            if trouble is None:
                trouble = (f"the store did not confirm the record within {timeout:g} s"
                           f"{' (' + self.sender.last_failure + ')' if self.sender.last_failure else ''}")
            self.log.release()
        return ok, trouble

    def _direct_status(self, status: str, why: str) -> None:
        """Around a blocked log: the error tag and the status straight to the store (and to the
        log, so a later replay agrees)."""
        from mlflow.entities import RunTag

        self._add(["t", "fpdsl.error", _tag(why)])
        try:
            self.client.log_batch(self.run_id, tags=[RunTag("fpdsl.error", _tag(why))])
            self.client.set_terminated(self.run_id, status=status)
        except Exception:
            pass

    def abort(self, status: str, why: str) -> None:
        """A forced stop (a third Ctrl-C): the status goes to the log only; the next start sends it."""
        self._add(["t", "fpdsl.stopped", _tag(why)])
        self._add(["s", status, int(time.time() * 1000)])
        try:
            self.log.append(b"".join(self._lines))
        except Exception:
            pass

    @property
    def retries(self) -> int:
        return self.client.retries


def _tag(v) -> str:
    return str(v)[:TAG_VALUE_MAX]
