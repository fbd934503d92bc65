"""Faults of real processes: kill -9, signals during writes, a locked or full store, a hanging
or dying tracking server, concurrent and corrupt resumes, crafted checkpoints. Each test
asserts the run's final state and counts its points against its own probe_history.npz."""
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import mlflow_runs, run_cli

FAST = ["dataset.n_points=64", "model.width=16", "probe.spectrum.every=5", "tracking.every=1",
        "tracking.per_decade=null", "tracking.images_per_decade=null"]
LONG = [*FAST, "budget.max_steps=1000000", "checkpoint.every=50"]


def start(tmp_path, *overrides, uri=None, **kw):
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri or f"sqlite:///{tmp_path}/mlflow.db", PYTHONUNBUFFERED="1")
    env.pop("CI", None)
    return subprocess.Popen([sys.executable, "-m", "fpdsl", *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def first_line(proc):
    line = proc.stdout.readline()
    assert line.startswith("fpdsl: run"), line + proc.stderr.read()
    return line.split()[2]


def history(client, run_id):
    return np.load(io.BytesIO(Path(client.download_artifacts(run_id, "probe_history.npz")).read_bytes()))


def loss_steps(client, run_id):
    return [m.step for m in client.get_metric_history(run_id, "loss")]


def wait_for_steps(tmp_path, run_id, n, timeout=60):
    """Until the run's write-ahead log holds n loss points (what kill -9 cannot take away)."""
    log = tmp_path / "fpdsl-log" / run_id / "log"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and log.read_bytes().count(b'["m","loss"') >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"the run logged fewer than {n} steps in {timeout} s")


def test_kill_9_then_a_new_start_loses_nothing_and_resume_completes_every_step_once(tmp_path):
    proc = start(tmp_path, *LONG)
    rid = first_line(proc)
    wait_for_steps(tmp_path, rid, 220)
    proc.kill()  # SIGKILL: no handler, no flush, no status
    proc.wait(timeout=30)
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "RUNNING"
    logged = (tmp_path / "fpdsl-log" / rid / "log").read_bytes().count(b'["m","loss"')
    sync = subprocess.run([sys.executable, "-m", "fpdsl", "sync"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db"), timeout=120)
    assert sync.returncode == 0 and "crashed" in sync.stdout, sync.stdout + sync.stderr
    run = client.get_run(rid)
    assert run.info.status == "FAILED" and "gone" in run.data.tags["fpdsl.crashed"]
    steps = loss_steps(client, rid)
    assert steps == list(range(len(steps))) and len(steps) == logged  # every point that reached the log
    assert not (tmp_path / "fpdsl-log" / rid).exists()
    # resume from the last checkpoint: the steps after it that the store has are not sent twice
    target = len(steps) + 60
    run_cli(tmp_path, *FAST, f"budget.max_steps={target}", "checkpoint.every=50", f"resume={rid}")
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"
    steps = loss_steps(client, rid)
    assert steps == list(range(target + 1))
    h = history(client, rid)
    assert list(h["trace/step"]) == steps


def test_a_crashed_run_is_marked_by_the_next_ordinary_start(tmp_path):
    proc = start(tmp_path, *LONG)
    rid = first_line(proc)
    wait_for_steps(tmp_path, rid, 50)
    proc.kill()
    proc.wait(timeout=30)
    out = run_cli(tmp_path, *FAST, "budget.max_steps=5")  # any later run on the same store
    assert rid in out.stdout and "crashed" in out.stdout
    client, runs = mlflow_runs(tmp_path)
    assert {r.info.run_id: r.info.status for r in runs}[rid] == "FAILED"
    assert not [r for r in runs if r.info.status == "RUNNING"]


def lock_store(db: Path, seconds: float):
    """A second process holding SQLite's exclusive lock on the store for a while."""
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); c.execute('COMMIT')")
    p = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_signal_while_the_store_is_locked_cuts_no_write_in_half(tmp_path):
    proc = start(tmp_path, *LONG)
    rid = first_line(proc)
    wait_for_steps(tmp_path, rid, 30)
    locker = lock_store(tmp_path / "mlflow.db", 6)
    time.sleep(1.5)  # the sender is now waiting on the lock, training goes on
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    locker.wait(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "KILLED" and "SIGINT" in run.data.tags["fpdsl.stopped"]
    h = history(client, rid)
    assert loss_steps(client, rid) == list(h["trace/step"])
    # the store is free again: another process writes into it at once
    with sqlite3.connect(tmp_path / "mlflow.db", timeout=1) as con:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()


def test_sigterm_during_the_final_writes_finishes_them_and_the_status_says_so(tmp_path):
    proc = start(tmp_path, *FAST, "budget.max_steps=300", "checkpoint.every=null")
    rid = first_line(proc)
    locker = lock_store(tmp_path / "mlflow.db", 8)  # training ends while the store is locked
    log = tmp_path / "fpdsl-log" / rid / "log"
    deadline = time.time() + 60
    while b'"final_loss"' not in (log.read_bytes() if log.exists() else b""):
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    locker.wait(timeout=30)
    assert "final writes" in err and proc.returncode == 143, err[-2000:]
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert loss_steps(client, rid) == list(range(301)) == list(history(client, rid)["trace/step"])
    assert {"figures", "final.npz", "checkpoint", "probe_history.npz"} <= {a.path for a in client.list_artifacts(rid)}


def test_a_quick_second_ctrl_c_is_ignored_and_everything_is_kept(tmp_path):
    proc = start(tmp_path, *LONG)
    rid = first_line(proc)
    wait_for_steps(tmp_path, rid, 30)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "ignored" in err, err[-2000:]
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "KILLED"
    h = history(client, rid)
    steps = loss_steps(client, rid)
    assert steps == list(h["trace/step"]) == list(range(len(steps)))
    assert {"figures", "final.npz", "checkpoint", "probe_history.npz"} <= {a.path for a in client.list_artifacts(rid)}
    # the interrupt checkpoint pairs the last step with its own state: resume is exact for adam
    from fpdsl import checkpoint

    ck = checkpoint.loads(Path(client.download_artifacts(rid, "checkpoint/last.pt")).read_bytes())
    assert ck["step"] == steps[-1] and ck["trace"]["step"][-1] == steps[-1]


def mount_tmpfs(folder: Path, size="24k"):
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")


def test_a_full_artifact_disk_ends_the_run_failed_with_its_metrics_kept(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    mount_tmpfs(store / "mlartifacts")
    try:
        proc = run_cli(tmp_path, *FAST, "budget.max_steps=100", "figures.formats=[png,svg,pdf]", "figures.dpi=300",
                       check=False, env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"})
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{store}/mlflow.db")
        (run,) = client.search_runs([client.get_experiment_by_name("fpdsl").experiment_id])
        assert run.info.status == "FAILED" and "No space left" in run.data.tags["fpdsl.error"]
        assert loss_steps(client, run.info.run_id) == list(range(101))  # the metrics live in the database
        assert (store / "fpdsl-log" / run.info.run_id).exists()  # the unsent artifacts wait in the log
    finally:
        subprocess.run(["umount", "-l", str(store / "mlartifacts")])


class Hanging(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
        else:
            time.sleep(600)

    do_POST = do_GET

    def log_message(self, *a):
        pass


def test_a_server_that_answers_health_but_hangs_is_refused_within_the_timeout(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t = time.time()
        proc = run_cli(tmp_path, *FAST, "budget.max_steps=5", "tracking.timeout=3", check=False,
                       env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.server_port}"})
        assert proc.returncode == 2 and time.time() - t < 30
        assert "tracking.uri" in proc.stderr.strip().splitlines()[-1] and "did not answer" in proc.stderr
    finally:
        server.shutdown()


def test_a_port_that_accepts_and_never_answers_is_refused_within_seconds(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    try:
        t = time.time()
        proc = run_cli(tmp_path, *FAST, "budget.max_steps=5", "tracking.timeout=3", check=False,
                       env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{sock.getsockname()[1]}"})
        assert proc.returncode == 2 and time.time() - t < 30 and "tracking.uri" in proc.stderr
    finally:
        sock.close()


def test_two_resumes_at_once_the_second_is_refused_naming_the_owner(tmp_path):
    run_cli(tmp_path, *FAST, "budget.max_steps=20", "checkpoint.every=10")
    client, (run,) = mlflow_runs(tmp_path)
    rid = run.info.run_id
    first = start(tmp_path, *FAST, "budget.max_steps=1000000", "checkpoint.every=50", f"resume={rid}")
    assert first_line(first) == rid
    second = run_cli(tmp_path, *FAST, "budget.max_steps=1000000", f"resume={rid}", check=False)
    assert second.returncode == 2 and "owned by another process" in second.stderr and "pid" in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    steps = loss_steps(client, rid)
    assert steps == list(range(len(steps)))  # one writer: no step twice


def test_resuming_a_finished_run_needs_a_larger_budget_and_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    run_cli(straight, *FAST, "budget.max_steps=40")
    run_cli(split, *FAST, "budget.max_steps=20", "checkpoint.every=null")
    client, (run,) = mlflow_runs(split)
    rid = run.info.run_id
    same = run_cli(split, *FAST, "budget.max_steps=20", f"resume={rid}", check=False)
    assert same.returncode == 2 and "budget.max_steps" in same.stderr and "already reached step 20" in same.stderr
    run_cli(split, *FAST, "budget.max_steps=40", f"resume={rid}")
    c2, (run2,) = mlflow_runs(straight)
    a = [m.value for m in c2.get_metric_history(run2.info.run_id, "loss")]
    b = [m.value for m in client.get_metric_history(rid, "loss")]
    assert client.get_run(rid).info.status == "FINISHED" and a == b and len(b) == 41


def test_a_truncated_checkpoint_is_reported_and_resume_falls_back_to_the_previous_one(tmp_path):
    run_cli(tmp_path, *FAST, "budget.max_steps=30", "checkpoint.every=10")
    client, (run,) = mlflow_runs(tmp_path)
    rid = run.info.run_id
    last = next((tmp_path / "mlartifacts").rglob("checkpoint/last.pt"))
    last.write_bytes(last.read_bytes()[:100])
    out = run_cli(tmp_path, *FAST, "budget.max_steps=40", "checkpoint.every=10", f"resume={rid}")
    assert "corrupt" in out.stdout and "previous.pt" in out.stdout
    assert loss_steps(client, rid) == list(range(41))
    for name in ("last.pt", "previous.pt"):
        p = next((tmp_path / "mlartifacts").rglob(f"checkpoint/{name}"))
        p.write_bytes(b"garbage")
    bad = run_cli(tmp_path, *FAST, "budget.max_steps=50", f"resume={rid}", check=False)
    assert bad.returncode == 2 and "corrupt" in bad.stderr.strip().splitlines()[-1]


def test_a_crafted_checkpoint_cannot_run_code(tmp_path):
    import pickle

    run_cli(tmp_path, *FAST, "budget.max_steps=10")
    client, (run,) = mlflow_runs(tmp_path)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    last = next((tmp_path / "mlartifacts").rglob("checkpoint/last.pt"))
    with open(last, "wb") as f:
        pickle.dump({"step": 1, "theta": Payload()}, f)
    proc = run_cli(tmp_path, *FAST, "budget.max_steps=20", f"resume={run.info.run_id}", check=False)
    assert proc.returncode == 2 and "corrupt" in proc.stderr and not marker.exists()


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_and_restarted_loses_nothing(tmp_path):
    from test_scale import free_port, serve

    port = free_port()
    server = serve(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, *FAST, "budget.max_steps=3000", "checkpoint.every=null", uri=uri)
    rid = first_line(proc)
    time.sleep(2)
    os.killpg(server.pid, signal.SIGKILL)  # the server dies while the run trains
    server.wait()
    time.sleep(3)
    server = serve(tmp_path, port)  # and comes back on the same backend
    try:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        assert client.get_run(rid).info.status == "FINISHED"
        assert loss_steps(client, rid) == list(range(3001)) == list(history(client, rid)["trace/step"])
    finally:
        os.killpg(server.pid, signal.SIGKILL)


def test_a_senders_window_is_one_batch_of_metrics_then_its_files_and_a_replay_of_it_changes_nothing(tmp_path):
    """Artifacts between metrics (a run's step-indexed images) do not split the metrics into
    several log_batch calls; a status goes alone, last; a window sent again (a crash before
    its mark) leaves the store as it was."""
    from mlflow.tracking import MlflowClient

    from fpdsl.wal import RunLog, Sender, encode

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("w", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    log = RunLog(tmp_path / "logs", run_id)
    assert log.acquire() is None
    log.open_append()
    records = []
    for step in range(3):
        records += [["m", "loss", 1.0 / (step + 1), 1000 + step, step], ["t", "last", str(step)]]
        (log.stage(f"{step}/image.png")).write_bytes(b"png %d" % step)
        records.append(["a", f"{step}/image.png", "images"])
    records += [["p", "seed", "0"], ["s", "FINISHED", 2000]]
    log.append(b"".join(encode(r) for r in records))

    calls = []

    class Counting:  # the real client, its calls written down
        def __getattr__(self, name):
            calls.append(name)
            return getattr(client, name)

    assert Sender(Counting(), log).drain(time.monotonic() + 30)
    assert calls == ["log_batch", "log_artifact", "log_artifact", "log_artifact", "set_terminated"]
    assert log.sent() == log.size
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["last"] == "2" and run.data.params["seed"] == "0"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert sorted(a.path for a in client.list_artifacts(run_id, "images")) == ["images/image.png"]

    # the same window again, as after a crash before its mark: nothing doubles
    (log.dir / "sent").write_text("0")
    for step in range(3):
        log.stage(f"{step}/image.png").write_bytes(b"png %d" % step)
    assert Sender(client, log).drain(time.monotonic() + 30)
    assert len(client.get_metric_history(run_id, "loss")) == 3 and client.get_run(run_id).info.status == "FINISHED"
