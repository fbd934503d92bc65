"""The population loss of a one-hidden-layer tanh network on 1-D data in one compiled pass.

For θ = (w, b, a, c) of x ↦ Σ_h a_h tanh(w_h x + b_h) + c, the mean squared error over the
n points of every member at once, without the (members, points, width) hidden states that
the batched kernel writes and reads (fpdsl.objective): per member, the output at every
point is built one hidden unit at a time, the loop over the points being vector code. tanh
is a rational function p(z)/q(z) (degrees 13 and 6, Eigen's float approximation) on z
clamped to ±7.9053: within 4.4 float32 ulps of the exact tanh over the line (torch's tanh:
within 0.6). No sum is reassociated, so a member's loss is the same bits whatever the
thread count or vector width. On the 2-core Xeon this project measures on it evaluates the
default problem 2.0-2.7× faster than the batched kernel's best variant
(docs/performance.md); fpdsl.tuning measures it beside the other variants on each machine
and shape.

Members are split over the threads torch uses (numba's parallel loop). A process forked
from one that has run a parallel loop uses the one-thread loop: the GNU OpenMP runtime
cannot run parallel code in such a child (numba ends the child instead).
"""
from __future__ import annotations

import os
import threading

import numba
import numpy as np

F32 = np.float32
# no 'nnan'/'ninf': a non-finite θ must give a non-finite loss (a diverged member); no 'reassoc':
# every sum runs in its written order, so a loss is the same bits on any thread count and
# vector width of CPUs with FMA (the vector code runs across the points, which need no reordering)
FAST = {"contract", "nsz"}
CLAMP = F32(7.90531110763549805)  # the approximation reaches ±1 there; beyond it, it grows like z⁷


@numba.njit(inline="always", fastmath=FAST)
def _tanh(z):
    z = CLAMP if z > CLAMP else z  # selects, not min/max: vector code without assuming no NaN
    z = -CLAMP if z < -CLAMP else z
    z2 = z * z
    p = z2 * F32(-2.76076847742355e-16) + F32(2.00018790482477e-13)
    p = z2 * p + F32(-8.60467152213735e-11)
    p = z2 * p + F32(5.12229709037114e-08)
    p = z2 * p + F32(1.48572235717979e-05)
    p = z2 * p + F32(6.37261928875436e-04)
    p = z2 * p + F32(4.89352455891786e-03)
    q = z2 * F32(1.19825839466702e-06) + F32(1.18534705686654e-04)
    q = z2 * q + F32(2.26843463243900e-03)
    q = z2 * q + F32(4.89352518554385e-03)
    return z * p / q


@numba.njit(fastmath=FAST, cache=True, nogil=True, error_model="numpy")
def member(row, x, target, width):
    """The mean squared error of the member θ = row = (w, b, a, c), w, b and a of `width` values
    each; NaN where θ is not finite (the clamp would hide it). The output at every point is
    built one hidden unit at a time: the loop over the points is vector code, and the points'
    outputs (a few KB) stay in L1."""
    for j in range(row.size):
        if not np.isfinite(row[j]):
            return np.float32(np.nan)
    out = np.empty(x.size, np.float32)
    out[:] = row[3 * width]
    for h in range(width):
        w, b, a = row[h], row[width + h], row[2 * width + h]
        for n in range(x.size):
            out[n] += a * _tanh(w * x[n] + b)
    acc = F32(0.0)
    for n in range(x.size):
        e = out[n] - target[n]
        acc += e * e
    return acc / F32(x.size)


@numba.njit(parallel=True, fastmath=FAST, cache=True, nogil=True, error_model="numpy")
def losses_parallel(theta, x, y, width, out):
    step = 1 if y.shape[0] > 1 else 0  # y: one target per member, or one for all
    for s in numba.prange(theta.shape[0]):
        i = np.intp(s)
        out[i] = member(theta[i], x, y[i * step], width)


@numba.njit(fastmath=FAST, cache=True, nogil=True, error_model="numpy")
def losses_serial(theta, x, y, width, out):
    step = 1 if y.shape[0] > 1 else 0
    for s in range(theta.shape[0]):
        out[s] = member(theta[s], x, y[s * step], width)


def losses(theta: np.ndarray, x: np.ndarray, y: np.ndarray, width: int, out: np.ndarray, threads: int) -> None:
    """out (S,) ← each member's MSE. theta (S, 3·width + 1) float32, C-contiguous, rows (w, b, a, c)
    as nn.Sequential(Linear(1, width), Tanh, Linear(width, 1)) flattens them; x (n,); y (1, n)
    shared or (S, n) one target per member."""
    loop = losses_parallel if len(theta) > 1 and parallel(threads) else losses_serial
    loop(theta, x, y, width, out)


_LOCAL = threading.local()  # numba's thread count is per calling thread
_FORK = {"parallel_ran": False, "forked": False}


def parallel(threads: int) -> bool:
    """Whether to run a compiled parallel loop (the loss above, the engines' *_parallel steps in
    fpdsl.optim.kernels) on `threads` threads now, numba's count set to it; False: run the
    one-thread twin (one thread asked for, or a child forked after parallel loops ran)."""
    if threads <= 1 or _FORK["forked"]:
        return False
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if getattr(_LOCAL, "threads", None) != threads:
        numba.set_num_threads(threads)
        _LOCAL.threads = threads
    _FORK["parallel_ran"] = True
    return True


def _after_fork_in_child() -> None:
    if _FORK["parallel_ran"]:
        _FORK["forked"] = True


os.register_at_fork(after_in_child=_after_fork_in_child)
