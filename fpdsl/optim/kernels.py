"""The population engines' generations on CPU, compiled (numba): one call a generation, and
the random numbers they use (splitmix64, normals).

Each engine has <engine>_prepare (the generation's members: PSO's moves, DE's trials,
SNES's sample), <engine>_step (after their losses: keep the bests; SNES also moves μ and σ
and draws the next directions) and <engine>_generation (both around fpdsl.fused's loss, row
by row: a run whose objective chose that loss makes one compiled call a generation, forward
pass included). The *_parallel twins split the members over threads where
fpdsl.fused.parallel allows, each thread preparing a member and then evaluating it while
the row is in its core's cache, the same numbers (a test checks them bitwise); SNES's
parallel step splits its move and its normals in one parallel loop. A parallel loop costs
about 1.5 µs to start on the 2-core Xeon, so a generation has one (two for SNES).

On CPU a generation's update as tensor calls is ten or more calls of 2-10 µs each (the
forward pass just before evicts their code and data from cache). At width 50 that was
15-25% of the batched forward pass; one pass over the population costs a few µs
(benchmarks/bench.py). On GPU the engines use the same steps as torch calls, and
tests/test_performance.py checks both against each other. Compiled on first use and
cached beside this file (`cache=True`), so later runs load them in about 0.1 s.

Arrays are the numpy views of the engines' tensors, changed in place. Random integers
`raw` are uniform in [0, 2¹⁶): raw · 2⁻¹⁶ is U[0, 1) on a grid of 2⁻¹⁶.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from fpdsl.fused import F32, member

jit = numba.njit(cache=True, nogil=True, error_model="numpy")
pjit = numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)  # *_parallel: see fpdsl.fused.parallel
UNIT = F32(2.0**-16)  # exact in float32: c · UNIT keeps c's dtype (float32 or float64), exactly c / 2¹⁶


GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment


@numba.njit(inline="always")
def _mix(z):
    """SplitMix64's output function (Steele, Lea & Flood 2014) of its state z."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@jit
def splitmix64(out, state):
    """out (uint64) ← the next len(out) numbers of SplitMix64 from state[0], which moves on
    past them. The state only adds γ, so the loop compiles to vector code."""
    s = state[0]
    for k in range(out.size):
        s += GAMMA
        out[k] = _mix(s)
    state[0] = s


@intrinsic
def _bits(typingctx, v):
    """The bits of a float32, as an int32."""
    return types.int32(types.float32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


@intrinsic
def _float(typingctx, b):
    """The float32 whose bits are the int32 b."""
    return types.float32(types.int32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.FloatType())


@numba.njit(inline="always")
def _log(v):
    """ln v of a normal float32 v > 0 as Cephes' logf computes it (v = m 2^e with m in
    [√½, √2), a degree-9 polynomial in m − 1), in float32 arithmetic only, so that a loop
    of it compiles to vector code (numba's math.log is a scalar call to libm)."""
    b = _bits(v)
    e = F32((b >> 23) - 126)
    m = _float((b & 0x7FFFFF) | 0x3F000000)  # [0.5, 1)
    small = m < F32(0.70710677)
    e = e - F32(1) if small else e
    x = m + m - F32(1) if small else m - F32(1)
    z = x * x
    y = ((((((((F32(7.0376836292e-2) * x - F32(1.1514610310e-1)) * x + F32(1.1676998740e-1)) * x
              - F32(1.2420140846e-1)) * x + F32(1.4249322787e-1)) * x - F32(1.6668057665e-1)) * x
           + F32(2.0000714765e-1)) * x - F32(2.4999993993e-1)) * x + F32(3.3333331174e-1)) * x * z
    return x + (y + F32(-2.12194440e-4) * e - F32(0.5) * z) + F32(0.693359375) * e


@numba.njit(inline="always")
def _box_muller(a, b):
    """Two independent standard normals from two uint32 random words, 24 bits of each:
    √(−2 ln u) (cos θ, sin θ) with u = (a's top 24 bits + 1) 2⁻²⁴ on (0, 1] and θ = 2π t 2⁻²⁴
    for b's top 24 bits t. θ is reduced exactly in integers to x = θ − jπ/4 in [−π/4, π/4)
    (j even), and sin x, cos x are Cephes' sinf/cosf polynomials; all float32 arithmetic."""
    r = np.sqrt(F32(-2.0) * _log(F32((a >> np.uint32(8)) + np.uint32(1)) * F32(2.0**-24)))
    t = np.int32(b >> np.uint32(8))
    j = ((t >> 21) + 1) & ~1
    x = F32(t - (j << 21)) * F32(math.pi / 2**23)
    z = x * x
    sin = ((F32(-1.9515295891e-4) * z + F32(8.3321608736e-3)) * z - F32(1.6666654611e-1)) * z * x + x
    cos = ((F32(2.443315711809948e-5) * z - F32(1.388731625493765e-3)) * z + F32(4.166664568298827e-2)) * z * z \
        - F32(0.5) * z + F32(1)
    q = (j >> 1) & 3  # θ = qπ/2 + x
    c, s = (cos, sin) if (q & 1) == 0 else (sin, cos)
    c = -c if q == 1 or q == 2 else c
    s = -s if q >= 2 else s
    return r * c, r * s


@jit
def normals(state, out):
    """out (1-D, float32 or float64) ← standard normals by Box–Muller from SplitMix64 words
    continuing from state[0] (one word a pair; out[k] and out[m + k], m = len(out) // 2, are pair
    k's cosine and sine; an odd last number is pair m's cosine). Two passes (the words, then the
    pairs), each vector code: about 1 ns a number, where torch's normal_ takes 2.8 (its
    uniforms are a serial mt19937). Values carry float32's precision whatever out's dtype."""
    n = out.size
    m = n // 2
    words = np.empty(m + 1, np.uint64)
    splitmix64(words[: m + (n & 1)], state)
    w = words.view(np.uint32)
    for k in range(m):
        c, s = _box_muller(w[2 * k], w[2 * k + 1])
        out[k] = c
        out[m + k] = s
    if n & 1:
        out[n - 1] = _box_muller(w[2 * m], w[2 * m + 1])[0]


@numba.njit(inline="always")
def _pso_row(i, x, v, pbest, best, raw, w, a1, a2, vmax):
    """Row i's move in the dtype of the scalars w, a1, a2, vmax (the state's: a uint16 is exact
    in float32, and numba would take float32 · uint16 to float64)."""
    for j in range(x.shape[1]):
        u = w * v[i, j] + a1 * F32(raw[0, i, j]) * (pbest[i, j] - x[i, j]) + a2 * F32(raw[1, i, j]) * (best[j] - x[i, j])
        if vmax > 0:
            u = min(max(u, -vmax), vmax)
        v[i, j] = u
        x[i, j] += u


@jit
def pso_move(x, v, pbest, best, raw, w, c1, c2, vmax):
    """v ← w v + c1 r1 (pbest − x) + c2 r2 (best − x), clamped to ±vmax when vmax > 0;
    x ← x + v. raw (2, S, P): r1 and r2."""
    for i in range(x.shape[0]):
        _pso_row(i, x, v, pbest, best, raw, w, c1 * UNIT, c2 * UNIT, vmax)


@jit
def keep_better(x, f, keep, fkeep, ties):
    """Row i of keep and fkeep[i] take x's row and f[i] where f[i] < fkeep[i] (≤ with ties;
    a NaN never does). Returns the index of the smallest fkeep."""
    S, P = x.shape
    for i in range(S):
        if f[i] < fkeep[i] or (ties and f[i] == fkeep[i]):
            fkeep[i] = f[i]
            for j in range(P):
                keep[i, j] = x[i, j]
    return np.argmin(fkeep)


@jit
def keep_best(x, f, keep, fkeep, ties, best, best_f):
    """keep_better, then the best kept row into best and its loss into best_f[0] where it
    improves on best_f[0]; returns whether it did."""
    g = keep_better(x, f, keep, fkeep, ties)
    if fkeep[g] < best_f[0]:
        best_f[0] = fkeep[g]
        best[:] = keep[g]
        return True
    return False


# An engine's kernels below take its state as one argument list, each using what it needs
# of it: <engine>_prepare(*state) makes a generation's members, <engine>_step(*state, f)
# takes their losses f, <engine>_generation(*state, f, data, target, width) does both
# around fpdsl.fused's loss (data (n,), target (n,): a run of its own), member by member
# (prepare row i, then its loss, on the same thread: the row is still in that core's cache,
# and a generation is one parallel loop).


@jit
def pso_prepare(x, v, pbest, pf, best, best_f, rstate, words, raw, w, c1, c2, vmax):
    """The generation's draws (raw (2, S, P), a view of words, from SplitMix64 at rstate[0])
    and its moves (pso_move)."""
    splitmix64(words, rstate)
    pso_move(x, v, pbest, best, raw, w, c1, c2, vmax)


@pjit
def pso_prepare_parallel(x, v, pbest, pf, best, best_f, rstate, words, raw, w, c1, c2, vmax):
    """pso_prepare with the moves split over threads (the same numbers)."""
    splitmix64(words, rstate)
    for i in numba.prange(x.shape[0]):
        _pso_row(i, x, v, pbest, best, raw, w, c1 * UNIT, c2 * UNIT, vmax)


@jit
def pso_step(x, v, pbest, pf, best, best_f, rstate, words, raw, w, c1, c2, vmax, f):
    """After the evaluation f: keep_best (each member's best and the swarm's); returns
    whether the swarm's improved."""
    return keep_best(x, f, pbest, pf, False, best, best_f)


@jit
def pso_generation(x, v, pbest, pf, best, best_f, rstate, words, raw, w, c1, c2, vmax, f, data, target, width):
    """A whole PSO generation in one call: the draws, each member moved, then its loss into f,
    then pso_step."""
    splitmix64(words, rstate)
    for i in range(x.shape[0]):
        _pso_row(i, x, v, pbest, best, raw, w, c1 * UNIT, c2 * UNIT, vmax)
        f[i] = member(x[i], data, target, width)
    return pso_step(x, v, pbest, pf, best, best_f, rstate, words, raw, w, c1, c2, vmax, f)


@pjit
def pso_generation_parallel(x, v, pbest, pf, best, best_f, rstate, words, raw, w, c1, c2, vmax, f, data, target,
                            width):
    """pso_generation with the members split over threads (the same numbers)."""
    splitmix64(words, rstate)
    for s in numba.prange(x.shape[0]):
        i = np.intp(s)
        _pso_row(i, x, v, pbest, best, raw, w, c1 * UNIT, c2 * UNIT, vmax)
        f[i] = member(x[i], data, target, width)
    return pso_step(x, v, pbest, pf, best, best_f, rstate, words, raw, w, c1, c2, vmax, f)


@numba.njit(inline="always")
def _below(w, n):
    """A uniform integer in [0, n) from the 32-bit random w (multiply-shift: bias < n / 2³²)."""
    return np.int64((np.uint64(w) * np.uint64(n)) >> np.uint64(32))


@numba.njit(inline="always")
def _wrap(t, S):
    """t mod S for 0 ≤ t < 2S, without a division (three divisions a row: DE's draws at S = 1000,
    151 parameters took 23 µs with them, 19 µs without)."""
    return t - S if t >= S else t


@jit
def de_draws(state, words, picks, forced, P):
    """A DE generation's random numbers in one call: words (uint64) ← the next len(words)
    numbers of SplitMix64 from state[0] (which moves on); the words past the first 2S are
    the generation's 16-bit uniforms (the caller holds them as a (S, P) view); from the
    first 2S, four 32-bit numbers a row i give picks[:, i] = r1, r2, r3, distinct and none
    of them i (offsets from i in [1, S) drawn without replacement, as _distinct_others does
    with torch's integers), and forced[i] uniform in [0, P)."""
    splitmix64(words, state)
    w = words.view(np.uint32)
    S = forced.size
    for i in range(S):
        k1 = 1 + _below(w[4 * i], S - 1)
        k2 = 1 + _below(w[4 * i + 1], S - 2)
        k2 += k2 >= k1
        lo, hi = min(k1, k2), max(k1, k2)
        k3 = 1 + _below(w[4 * i + 2], S - 3)
        k3 += k3 >= lo
        k3 += k3 >= hi
        picks[0, i] = _wrap(i + k1, S)
        picks[1, i] = _wrap(i + k2, S)
        picks[2, i] = _wrap(i + k3, S)
        forced[i] = _below(w[4 * i + 3], P)


@numba.njit(inline="always")
def _de_row(i, x, best, picks, raw, forced, F, threshold, strategy, out):
    r1, r2, r3 = picks[0, i], picks[1, i], picks[2, i]
    for j in range(x.shape[1]):
        if raw[i, j] < threshold or j == forced[i]:
            d = F * (x[r1, j] - x[r2, j])
            if strategy == 0:
                out[i, j] = best[j] + d
            elif strategy == 1:
                out[i, j] = x[r3, j] + d
            else:
                out[i, j] = x[i, j] + F * (best[j] - x[i, j]) + d
        else:
            out[i, j] = x[i, j]


@jit
def de_trial(x, best, picks, raw, forced, F, threshold, strategy, out):
    """Trial vectors into out: component j of row i is the mutant's where raw[i, j] <
    threshold or j == forced[i], else x's. Mutant: 0 best1 best + F (x_r1 − x_r2), 1 rand1
    x_r3 + F (x_r1 − x_r2), 2 current_to_best1 x + F (best − x) + F (x_r1 − x_r2);
    picks (3, S): r1, r2, r3."""
    for i in range(x.shape[0]):
        _de_row(i, x, best, picks, raw, forced, F, threshold, strategy, out)


@jit
def de_prepare(trials, x, f, best, best_f, rstate, words, picks, raw, forced, F, threshold, strategy):
    """The generation's draws (de_draws from SplitMix64 at rstate[0]) and its trials (de_trial)."""
    de_draws(rstate, words, picks, forced, x.shape[1])
    de_trial(x, best, picks, raw, forced, F, threshold, strategy, trials)


@jit
def de_step(trials, x, f, best, best_f, rstate, words, picks, raw, forced, F, threshold, strategy, ft):
    """After the trials' evaluation ft: keep_best (a trial no worse than its member replaces
    it); returns whether the population's best improved."""
    return keep_best(trials, ft, x, f, True, best, best_f)


@jit
def de_generation(trials, x, f, best, best_f, rstate, words, picks, raw, forced, F, threshold, strategy, ft, data,
                  target, width):
    """A whole DE generation in one call: the draws, each trial made, then its loss into ft,
    then de_step."""
    de_draws(rstate, words, picks, forced, x.shape[1])
    for i in range(x.shape[0]):
        _de_row(i, x, best, picks, raw, forced, F, threshold, strategy, trials)
        ft[i] = member(trials[i], data, target, width)
    return de_step(trials, x, f, best, best_f, rstate, words, picks, raw, forced, F, threshold, strategy, ft)


@pjit
def de_generation_parallel(trials, x, f, best, best_f, rstate, words, picks, raw, forced, F, threshold, strategy, ft,
                           data, target, width):
    """de_generation with the trials split over threads (the same numbers; each reads x, which
    only the step after the loop changes). The draws stay one serial call: drawn row by row on
    the threads they cost more (short rows leave most of the vector loop's work to its scalar
    ends)."""
    de_draws(rstate, words, picks, forced, x.shape[1])
    for s in numba.prange(x.shape[0]):
        i = np.intp(s)
        _de_row(i, x, best, picks, raw, forced, F, threshold, strategy, trials)
        ft[i] = member(trials[i], data, target, width)
    return de_step(trials, x, f, best, best_f, rstate, words, picks, raw, forced, F, threshold, strategy, ft)


@numba.njit(inline="always")
def _snes_row(i, mu, sigma, d, half, x):
    if i < half:
        for j in range(x.shape[1]):
            x[i, j] = mu[j] - sigma[j] * d[i, j]
    else:
        for j in range(x.shape[1]):
            x[i, j] = mu[j] + sigma[j] * d[i - half, j]


@jit
def snes_sample(mu, sigma, d, half, x):
    """x ← mu + sigma ∘ z for the directions z of a generation: rows [half:] of z are d's rows,
    rows [:half] the negatives of d's first half rows (mirrored pairs; half = 0: z = d)."""
    for i in range(x.shape[0]):
        _snes_row(i, mu, sigma, d, half, x)


@numba.njit(inline="always")
def _snes_coefficients(weights, half):
    """Each drawn row's weight in μ's step (c) and in σ's (e): z_k = −d_i for the mirrored
    member k = i adds −u_k to d_i's weight in μ's step and u_k to its weight in σ's."""
    c = weights[half:].astype(np.float64)
    e = c.copy()
    for i in range(half):
        c[i] -= weights[i]
        e[i] += weights[i]
    return c, e


@numba.njit(inline="always")
def _snes_move(mu, sigma, d, c, e, lr_mean, lr_sigma, lo, hi):
    """Components [lo, hi) of snes_update's move (each component's sums in the rows' order,
    so a split over components gives the same numbers)."""
    g_mu = np.zeros(hi - lo)
    g_sigma = np.zeros(hi - lo)
    for i in range(d.shape[0]):
        ci, ei = c[i], e[i]
        for j in range(lo, hi):
            v = d[i, j]
            g_mu[j - lo] += ci * v
            g_sigma[j - lo] += ei * v * v
    for j in range(lo, hi):
        mu[j] += lr_mean * sigma[j] * g_mu[j - lo]
        sigma[j] *= math.exp(lr_sigma / 2 * g_sigma[j - lo])


@jit
def snes_update(mu, sigma, d, half, weights, lr_mean, lr_sigma):
    """mu ← mu + lr_mean σ ∘ Σ_k u_k z_k; σ ← σ ∘ exp(lr_sigma/2 · Σ_k u_k z_k²), with z as in
    snes_sample and u = weights (by member): each row of d read once, with the weights of its
    pair."""
    c, e = _snes_coefficients(weights, half)
    _snes_move(mu, sigma, d, c, e, lr_mean, lr_sigma, 0, mu.size)


@jit
def ranked(f):
    """The members' order by loss f (float32), ties by index and NaN last: np.argsort(f,
    kind="stable")'s order, by sorting 64-bit keys (the loss's bits made monotone, −0 as +0,
    then the index). Numba's stable argsort took 32 µs for 1000 members on the 2-core Xeon,
    this 12 µs (at 50 members, 0.2 µs more than it). float64 losses: numba's stable argsort."""
    if f.itemsize != 4:
        return np.argsort(f, kind="mergesort")
    n = f.size
    keys = np.empty(n, np.uint64)
    bits = f.view(np.uint32)
    for i in range(n):
        b = bits[i]
        if f[i] != f[i]:
            u = np.uint32(0xFFFFFFFF)  # NaN: after +inf (0xFF800000)
        elif f[i] == 0:
            u = np.uint32(0x80000000)  # −0 and +0 tie
        elif b >> np.uint32(31):
            u = ~b  # negative: larger magnitude first
        else:
            u = b | np.uint32(0x80000000)
        keys[i] = (np.uint64(u) << np.uint64(32)) | np.uint64(i)
    keys.sort()
    order = np.empty(n, np.int64)
    for k in range(n):
        order[k] = np.int64(keys[k] & np.uint64(0xFFFFFFFF))
    return order


@numba.njit(inline="always")
def _snes_rank(f, util, weights, best, best_f, x):
    """Rank the members (ties by index, NaN last), give the k-th best the utility util[k]
    (weights, by member), and keep the best member in best, best_f[0] where it improves."""
    order = ranked(f)
    for k in range(order.size):
        weights[order[k]] = util[k]
    g = order[0]
    improved = f[g] < best_f[0]
    if improved:
        best_f[0] = f[g]
        best[:] = x[g]
    return improved


@jit
def snes_prepare(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state, blocks):
    """The generation's members from its directions d (snes_sample)."""
    snes_sample(mu, sigma, d, half, x)


@pjit
def snes_prepare_parallel(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state, blocks):
    """snes_prepare with the members split over threads (the same numbers)."""
    for i in numba.prange(x.shape[0]):
        _snes_row(i, mu, sigma, d, half, x)


@jit
def snes_step(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state, blocks, f):
    """After the evaluation f: _snes_rank; snes_update from the generation's directions d; the
    next generation's directions d_next ← normals from state. Returns whether the best improved."""
    improved = _snes_rank(f, util, weights, best, best_f, x)
    snes_update(mu, sigma, d, half, weights, lr_mean, lr_sigma)
    normals(state, d_next.reshape(d_next.size))
    return improved


@pjit
def snes_step_parallel(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state, blocks, f):
    """snes_step with the move of μ and σ (by components) and the normals (by blocks of pairs)
    split into `blocks` blocks (one a thread) in one parallel loop, the same numbers whatever
    the split: SplitMix64's state only adds γ, so block b starts from state + (its first word) γ,
    and each block is normals' two vector passes, written out again here: as one helper shared
    with normals (inlined or called) they timed 1.8-3.1× slower in this step and up to 5× in
    normals, on the 2-core Xeon."""
    improved = _snes_rank(f, util, weights, best, best_f, x)
    c, e = _snes_coefficients(weights, half)
    out = d_next.reshape(d_next.size)
    n, P, s0 = out.size, mu.size, state[0]
    m = n // 2
    size, cols = -(-m // blocks), -(-P // blocks)
    for b in numba.prange(blocks):
        lo, hi = min(m, b * size), min(m, (b + 1) * size)
        words = np.empty(hi - lo, np.uint64)
        splitmix64(words, np.array([s0 + np.uint64(lo) * GAMMA]))
        w = words.view(np.uint32)
        cos, sin = out[lo:hi], out[m + lo : m + hi]
        for k in range(hi - lo):
            c_k, s_k = _box_muller(w[2 * k], w[2 * k + 1])
            cos[k] = c_k
            sin[k] = s_k
        _snes_move(mu, sigma, d, c, e, lr_mean, lr_sigma, min(P, b * cols), min(P, (b + 1) * cols))
    if n & 1:
        word = np.empty(1, np.uint64)
        splitmix64(word, np.array([s0 + np.uint64(m) * GAMMA]))
        w = word.view(np.uint32)
        out[n - 1] = _box_muller(w[0], w[1])[0]
    state[0] = s0 + np.uint64(m + (n & 1)) * GAMMA
    return improved


@jit
def snes_generation(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state, blocks, f,
                    data, target, width):
    """A whole SNES generation in one call: each member sampled, then its loss into f, then snes_step."""
    for i in range(x.shape[0]):
        _snes_row(i, mu, sigma, d, half, x)
        f[i] = member(x[i], data, target, width)
    return snes_step(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state, blocks, f)


@pjit
def snes_generation_parallel(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state,
                             blocks, f, data, target, width):
    """snes_generation split over threads (the same numbers): the members, then the step."""
    for s in numba.prange(x.shape[0]):
        i = np.intp(s)
        _snes_row(i, mu, sigma, d, half, x)
        f[i] = member(x[i], data, target, width)
    return snes_step_parallel(mu, sigma, d, half, util, weights, best, best_f, x, lr_mean, lr_sigma, d_next, state,
                              blocks, f)
