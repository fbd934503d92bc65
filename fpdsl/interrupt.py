"""SIGINT and SIGTERM, handled so that nothing is cut in half.

Before anything is written to a store, a signal stops the process at once (Interrupted,
a KeyboardInterrupt). Once a run is being recorded, `deferred()` holds the signals: the
first sets a flag that the training loop reads at its next step boundary (and an
objective evaluation reads between evaluations), so no store write, log line or
checkpoint is interrupted half-way; a second is ignored with a line saying so; a third
within ABORT_SECONDS of the second ends the process at once, after the abort callbacks
(each live run appends KILLED to its write-ahead log, which the next start replays).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABORT_SECONDS = 5.0


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int, where: str = ""):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}{' ' + where if where else ''}")
        self.signum, self.where = signum, where

    def __reduce__(self):  # a joblib worker hands it back to the launcher pickled
        return type(self), (self.signum, self.where)


class _State:
    def __init__(self):
        self.signum: int | None = None  # the first signal received while deferred
        self.count = 0
        self.last = 0.0
        self.depth = 0  # nested deferred() blocks
        self.on_abort: list = []  # callables run before a forced exit
        self.on_first: list = []  # callables run at the first signal (e.g. tell the sweep)
        self.closing = False  # training is over: the run's final writes are under way


STATE = _State()


def requested() -> int | None:
    """The signal number that asked the run to stop, or None."""
    return STATE.signum


def _handler(signum, frame):
    if STATE.depth == 0:
        raise Interrupted(signum, "before anything was recorded")
    now = time.monotonic()
    STATE.count += 1
    name = signal.Signals(signum).name
    if STATE.count == 1:
        STATE.signum = signum
        STATE.last = now
        doing = "finishing the run's final writes" if STATE.closing else \
            "stopping at the end of this step, then writing what was recorded"
        _say(f"{name}: {doing} (again: ignored; a third time within {ABORT_SECONDS:g} s: stop at once)")
        for fn in list(STATE.on_first):
            _quietly(fn)
        return
    if STATE.count == 2 or now - STATE.last > ABORT_SECONDS:
        STATE.last = now
        STATE.count = 2
        _say(f"{name} ignored: still writing the run's results (once more within {ABORT_SECONDS:g} s stops at once)")
        return
    _say(f"{name} again: stopping now; the write-ahead log keeps what was recorded (the next fpdsl start sends it)")
    for fn in list(STATE.on_abort):
        _quietly(fn)
    os._exit(128 + signum)


def _say(text: str) -> None:
    try:
        sys.stderr.write(f"\nfpdsl: {text}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:
        pass


def install() -> None:
    """The handlers for the whole process (main thread only): called once by the command line."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)


@contextmanager
def deferred():
    """Signals only set the stop flag inside this block (the run is being recorded)."""
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main and STATE.depth == 0:
        previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    if STATE.depth == 0:
        STATE.signum, STATE.count, STATE.closing = None, 0, False
    STATE.depth += 1
    try:
        yield STATE
    finally:
        STATE.depth -= 1
        if main and STATE.depth == 0:
            for s, h in previous.items():
                signal.signal(s, h)


def reset() -> None:
    """Forget a handled stop request (a later run in the same process starts afresh)."""
    STATE.signum, STATE.count = None, 0
