"""The population forward's variant for this machine, chosen by measuring it, and cached.

What is fastest differs between CPUs: on one AMD EPYC torch's sigmoid was ~2.5× faster
than its tanh, so the kernel computed tanh as 2σ(2z) − 1 with the affine part folded into
the next layer; on an Intel Xeon with AVX-512 torch's own tanh wins. The best chunk of
members per call (how much hidden state stays in cache) also depends on the CPU. Where
fpdsl.fused applies (one hidden tanh layer, 1-D data, mean squared error) its one-pass loss
is a candidate too. So on the first batched call for a shape, each variant (tanh or the
sigmoid fold × a few chunk sizes, and the fused loss) runs on the real shapes in
interleaved rounds, back to back as an engine calls it, the fastest is kept, and the choice
is cached in ~/.cache/fpdsl/kernels.json under a key naming the CPU model, the torch
version, the thread count, the dtype, the shapes and the way of measuring; another CPU,
torch version or way of measuring is measured afresh. One process measures at a time (a
file lock beside the cache): another that needs the same shape meanwhile waits and reads
the choice. A choice measured while other work took the CPU from the measurement is
provisional: it serves while the machine stays busy, and a quiet machine measures again.
FPDSL_KERNEL=fold, =tanh or =fused skips the measurement (benchmarks, tests; fused where it
does not apply gives tanh). Runs record the variant they used (tag fpdsl.kernel).
"""
from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import torch

CHUNKS = (2 << 20, 8 << 20, 32 << 20)  # bytes of hidden state per call (CPU)
ROUNDS = 5
SLICE_SECONDS = 0.02  # per variant per round, after one untimed call
BUSY_WAIT = 0.1  # a measurement that waited for the CPU this share of its time or more is provisional
METHOD = 4  # in the cache key: a choice an older measurement (or set of candidates) made is measured again


@dataclass(frozen=True)
class Variant:
    fold: bool = True  # tanh as 2σ(2z) − 1 (else torch's tanh)
    chunk_bytes: int = 8 << 20
    fused: bool = False  # fpdsl.fused's one compiled pass (no hidden states, no chunks)

    @property
    def name(self) -> str:
        return "fused" if self.fused else f"{'fold' if self.fold else 'tanh'}/{self.chunk_bytes >> 20}MB"


DEFAULT = Variant()
FUSED = Variant(fold=False, fused=True)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fpdsl" / "kernels.json"


def key(objective, size: int) -> str:
    widths = "-".join(str(s[0]) for s in objective.shapes if len(s) == 2)
    return (f"{cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | {objective.dtype} | "
            f"points {objective.x.shape[0]} | in {objective.x.shape[1]} | widths {widths} | members {size} | "
            f"measure {METHOD}")


def candidates(objective, size: int) -> list[Variant]:
    """The variants worth measuring for calls of `size` members: chunk sizes that split them
    differently, each with the sigmoid fold and torch's tanh when the model has tanh."""
    folds = (True, False) if "tanh" in objective.kernel.acts else (True,)
    per_member = objective.activation_size * objective.x.element_size()
    chunks = {}
    for c in CHUNKS:
        chunks.setdefault(-(-size // max(1, c // per_member)), c)  # number of calls → the first size giving it
    return [Variant(f, c) for f in folds for c in chunks.values()] + ([FUSED] if objective.fusable else [])


def choose(objective, thetas: torch.Tensor) -> Variant:
    """The variant for this objective's population calls of len(thetas) members."""
    forced = os.environ.get("FPDSL_KERNEL")
    if forced == "fused" and objective.fusable:
        return FUSED
    if forced in ("fold", "tanh", "fused"):  # fused where it does not apply: the exact tanh
        return Variant(forced == "fold", DEFAULT.chunk_bytes)
    k = key(objective, len(thetas))
    cached = _read().get(k)
    if _usable(cached):
        return _variant(cached)
    # one process measures at a time: another (a batched launcher's other worker, a parallel
    # grid's) waits, then reads its choice instead of measuring the same shape on a busy CPU
    with _lock(timeout=60) as locked:
        cached = _read().get(k) if locked else None
        if _usable(cached):
            return _variant(cached)
        wall, waited = time.perf_counter(), _waited()
        best = measure(objective, thetas)
        busy = waited is not None and (_waited() - waited) > BUSY_WAIT * (time.perf_counter() - wall)
        if locked:
            _write(k, best, busy)
    return best


def _waited() -> float | None:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux's schedstat;
    None where it is not available): the measure of other work taking the CPU from a
    measurement (0 on a quiet machine, 0.3-0.5 of the time with two busy processes beside it
    on 2 cores)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _usable(entry: dict | None) -> bool:
    """Whether a cached choice serves now. One measured while other work took the CPU from
    the measurement is provisional (one measured while a test suite ran beside it picked the
    sigmoid fold at width 200 × 50 members, 10% slower than torch's tanh on the quiet
    machine): it serves while the machine stays busy (a one-minute load average above all
    cores but half of one), and a quiet machine measures the shape again."""
    if entry is None:
        return False
    if not entry.get("busy"):
        return True
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5
    except OSError:
        return True


def _variant(entry: dict) -> Variant:
    return Variant(**{f.name: entry[f.name] for f in fields(Variant)})


def measure(objective, thetas: torch.Tensor, variants: list[Variant] | None = None) -> Variant:
    """The fastest variant on these members: median over interleaved rounds of each one's time
    per call. Each slice starts with an untimed call: the first call after another variant
    finds its buffers pushed out of the caches by the other's, where an engine calls the same
    variant generation after generation (timing it made the smallest chunks look fastest:
    2 MB picked at width 50 × 1000 members, 13% slower than 32 MB run back to back)."""
    variants = variants or candidates(objective, len(thetas))
    if len(variants) == 1:
        return variants[0]
    times = {v: [] for v in variants}
    with torch.no_grad():
        # calls a slice, each variant's own (sized from the fastest, a slow variant's slices ran
        # 2-3× longer: 2.1 s to measure 50 × 1000 members once the fused loss was a candidate)
        calls = {v: max(1, int(SLICE_SECONDS / max(_time(objective, thetas, v, 1, warm=True), 1e-6))) for v in variants}
        for _ in range(ROUNDS):
            for v in variants:
                times[v].append(_time(objective, thetas, v, calls[v], warm=True))
    return min(variants, key=lambda v: sorted(times[v])[len(times[v]) // 2])


def _time(objective, thetas, variant: Variant, calls: int, warm: bool = False) -> float:
    """Seconds per call of `variant` over `calls` calls, after one untimed call when warm."""
    saved = objective.variant
    objective.variant = variant
    try:
        if warm:
            objective.population_loss(thetas, count=False)
        t = time.perf_counter()
        for _ in range(calls):
            objective.population_loss(thetas, count=False)
        return (time.perf_counter() - t) / calls
    finally:
        objective.variant = saved


def _read() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def _lock(timeout: float):
    """The cache's lock, held while the block runs; yields False (not held) where it cannot be
    taken in time or at all (a read-only home: measure again next time)."""
    from filelock import FileLock, Timeout

    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=timeout)
        lock.acquire()
    except (OSError, Timeout):
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _write(k: str, v: Variant, busy: bool = False) -> None:
    """Add the choice for key k to the cache (the caller holds the lock); busy: measured on a
    busy machine (provisional)."""
    path = cache_file()
    try:
        data = _read()
        data[k] = asdict(v) | ({"busy": True} if busy else {})
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: measure again next time
        pass
