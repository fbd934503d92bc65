"""Datasets: each returns inputs x (n, d) and targets y (n, c) as float64 numpy arrays.

`uniform` says whether x is a uniform 1-D grid, which the DFT-based probes and the
Sobolev loss need.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import numpy as np
from pydantic import Field

from fpdsl import limits
from fpdsl.errors import ConfigError

Seed = Annotated[int, Field(ge=0, lt=2**32)]
MAX_FILE_BYTES = 1 << 30  # a .csv larger than this is refused (convert it to .npz)


class Dataset:
    """What every dataset gives: inputs x (n, d) and targets y (n, c) as float64 arrays, and
    `uniform`, true when x is one column of evenly spaced values (the DFT-based probes and
    the Sobolev loss need it). A dataset of your own subclasses this (fpdsl builds only
    datasets of this kind from a config) and sets the three in its constructor."""

    x: np.ndarray
    y: np.ndarray
    uniform: bool = False


def _points(n: int, dim: int, key: str) -> None:
    limits.estimate_rows_bytes(n, dim + 1, key, f"{n:,} points", f"lower {key}")


class Sines1D(Dataset):
    """y(x) = Σ_i A_i sin(f_i x + φ_i) on a uniform grid (endpoints included), plus optional noise."""

    def __init__(
        self,
        frequencies: Annotated[list[float], Field(min_length=1)] = (1.0, 3.0, 5.0),
        amplitudes: Optional[list[float]] = None,
        phases: Optional[list[float]] = None,
        interval: Annotated[list[float], Field(min_length=2, max_length=2)] = (-math.pi, math.pi),
        n_points: Annotated[int, Field(ge=2)] = 201,
        noise: Annotated[float, Field(ge=0)] = 0.0,
        seed: Seed = 0,
    ):
        f = np.asarray(frequencies, dtype=float)
        a = np.ones_like(f) if amplitudes is None else np.asarray(amplitudes, dtype=float)
        p = np.zeros_like(f) if phases is None else np.asarray(phases, dtype=float)
        for key, arr in (("amplitudes", a), ("phases", p)):
            if arr.shape != f.shape:
                raise ConfigError(
                    f"dataset.{key} has {arr.size} values but dataset.frequencies has {f.size}; give one per frequency"
                )
        lo, hi = interval
        if not hi > lo:
            raise ConfigError(f"dataset.interval must be [low, high] with high > low, got {list(interval)}")
        _points(n_points, 1, "dataset.n_points")
        nyquist = np.pi * (n_points - 1) / (hi - lo)  # the highest angular frequency the grid resolves
        if np.abs(f).max() >= nyquist:
            raise ConfigError(f"dataset.frequencies: {np.abs(f).max():g} is above what {n_points} points on "
                              f"[{lo:g}, {hi:g}] resolve (below {nyquist:.3g}); raise dataset.n_points or lower it")
        x = np.linspace(lo, hi, n_points)
        with np.errstate(all="ignore"):  # an overflow is reported as a non-finite target (fpdsl.limits)
            y = (a[:, None] * np.sin(f[:, None] * x[None, :] + p[:, None])).sum(0)
        if noise > 0:
            y = y + noise * np.random.default_rng(seed).standard_normal(n_points)
        self.x = x[:, None]
        self.y = y[:, None]
        self.uniform = True
        # the sine components, for probes that measure each one (spectral_amplitude)
        self.frequencies, self.amplitudes, self.phases = f, a, p
        self.angular_frequencies = f


class Rahaman(Dataset):
    """λ(x) = Σ_i A_i sin(2π k_i x + φ_i) on x_j = j/n, j = 0 .. n−1 (uniform on [0, 1), periodic),
    φ_i ~ U[0, 2π) drawn with `seed` (Rahaman et al. 2019).

    amplitudes: 'equal' (all 1), 'rising' (A_i = i/K for the i-th of K frequencies in the
    given order: 0.1, 0.2, …, 1.0 for the default ten), or one value per frequency.
    """

    def __init__(
        self,
        frequencies: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50),
        amplitudes: Union[Literal["equal", "rising"], list[float]] = "equal",
        n_points: Annotated[int, Field(ge=2)] = 200,
        seed: Seed = 0,
    ):
        k = np.asarray(frequencies, dtype=float)
        if amplitudes == "equal":
            a = np.ones_like(k)
        elif amplitudes == "rising":
            a = np.arange(1, k.size + 1) / k.size
        else:
            a = np.asarray(amplitudes, dtype=float)
            if a.shape != k.shape:
                raise ConfigError(
                    f"dataset.amplitudes has {a.size} values but dataset.frequencies has {k.size}; "
                    "give one per frequency, or 'equal' / 'rising'"
                )
        _points(n_points, 1, "dataset.n_points")
        if k.max() >= n_points / 2:
            raise ConfigError(
                f"dataset.n_points={n_points} cannot resolve frequency {k.max():g} (Nyquist: n_points/2); "
                f"raise dataset.n_points above {int(2 * k.max())}"
            )
        phi = np.random.default_rng(seed).uniform(0, 2 * np.pi, k.size)
        x = np.arange(n_points) / n_points
        y = (a[:, None] * np.sin(2 * np.pi * k[:, None] * x[None, :] + phi[:, None])).sum(0)
        self.x, self.y, self.uniform = x[:, None], y[:, None], True
        self.frequencies, self.amplitudes, self.phases = k, a, phi
        self.angular_frequencies = 2 * np.pi * k


class SineSum(Dataset):
    """f(x) = Σ_{k=1}^{d} A sin(ω x_k + φ) at n points x ~ U[low, high]^d, drawn with `seed`
    (Zhou et al. 2021: d = 5, A = 3.5, ω = 5, φ = 1, 80 points on [−4, 2]^5; condense1d: d = 1)."""

    def __init__(
        self,
        n_points: Annotated[int, Field(ge=1)] = 80,
        dim: Annotated[int, Field(ge=1)] = 5,
        low: float = -4.0,
        high: float = 2.0,
        amplitude: float = 3.5,
        omega: float = 5.0,
        phase: float = 1.0,
        seed: Seed = 0,
    ):
        if not high > low:
            raise ConfigError(f"dataset.high ({high}) must be greater than dataset.low ({low})")
        _points(n_points, dim, "dataset.n_points")
        x = np.random.default_rng(seed).uniform(low, high, (n_points, dim))
        self.x = x
        self.y = (amplitude * np.sin(omega * x + phase)).sum(axis=1, keepdims=True)
        self.uniform = False


class Digits(Dataset):
    """scikit-learn's digits (1797 images of 8×8, shipped inside the package, no download):
    x = the 64 pixels scaled to [0, 1], y = the label one-hot (10 outputs), as a regression target.

    n_samples: a random subset of that many images (drawn with `seed`); null keeps all.
    """

    def __init__(self, n_samples: Optional[Annotated[int, Field(ge=1)]] = None, seed: Seed = 0):
        from sklearn.datasets import load_digits

        d = load_digits()
        x, labels = d.data / 16.0, d.target
        if n_samples is not None:
            if n_samples > len(labels):
                raise ConfigError(f"dataset.n_samples={n_samples} but digits has {len(labels)} images; lower it or use null")
            idx = np.sort(np.random.default_rng(seed).choice(len(labels), n_samples, replace=False))
            x, labels = x[idx], labels[idx]
        self.x = np.ascontiguousarray(x, dtype=float)
        self.y = np.eye(10)[labels]
        self.labels = labels
        self.uniform = False


class Image2D(Dataset):
    """A grey image as a function of pixel coordinates: x = (row, col)/size in [0, 1)², y = grey
    level in [0, 1], size² points.

    image: 'zoneplate' (procedural, ½ + ½ cos(π · size · r²), r the distance to the image
    centre: its local frequency size·r rises from 0 at the centre to Nyquist at the edges), 'rings'
    (procedural: a disc, a square and a few stripes), or 'china' / 'flower'
    (scikit-learn's bundled sample photographs, centre-cropped, grey, resized).
    """

    def __init__(
        self,
        image: Literal["zoneplate", "rings", "china", "flower"] = "zoneplate",
        size: Annotated[int, Field(ge=2, le=512)] = 32,
    ):
        u = np.arange(size) / size
        r_, c_ = np.meshgrid(u, u, indexing="ij")
        if image == "zoneplate":
            r2 = (r_ - 0.5) ** 2 + (c_ - 0.5) ** 2
            img = 0.5 + 0.5 * np.cos(np.pi * size * r2)
        elif image == "rings":
            disc = ((r_ - 0.35) ** 2 + (c_ - 0.35) ** 2 < 0.2**2).astype(float)
            square = ((np.abs(r_ - 0.7) < 0.15) & (np.abs(c_ - 0.7) < 0.15)).astype(float)
            stripes = 0.25 * (1 + np.sin(2 * np.pi * 6 * (r_ + c_)))
            img = np.clip(0.6 * disc + 0.8 * square + 0.4 * stripes * (c_ < 0.5) * (r_ > 0.5), 0, 1)
        else:
            from PIL import Image
            from sklearn.datasets import load_sample_image

            rgb = load_sample_image(f"{image}.jpg")
            h, w = rgb.shape[:2]
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            grey = Image.fromarray(rgb[top : top + s, left : left + s]).convert("L")
            img = np.asarray(grey.resize((size, size), Image.Resampling.LANCZOS), dtype=float) / 255.0
        self.x = np.stack([r_.ravel(), c_.ravel()], axis=1)
        self.y = np.clip(img, 0, 1).reshape(-1, 1)
        self.size = size
        self.uniform = False


class File(Dataset):
    """The user's own data: a .npz with named arrays, or a .csv with a header row naming columns.

    x, y: the array names (.npz) or column names (.csv; a list for several columns). 1-D
    arrays become one column. Checked on load: the file and names exist, the values are
    numbers, x and y have the same number of rows, nothing is NaN or infinite.
    `uniform` is true when x is one column of evenly spaced increasing values.
    """

    def __init__(
        self,
        path: Optional[Annotated[str, Field(min_length=1)]] = None,
        x: Union[str, Annotated[list[str], Field(min_length=1)]] = "x",
        y: Union[str, Annotated[list[str], Field(min_length=1)]] = "y",
    ):
        from hydra.utils import to_absolute_path

        if path is None:
            raise ConfigError("dataset.path: not set; give dataset.path=<your file>.npz or .csv")
        p = Path(to_absolute_path(path))
        if not p.is_file():
            raise ConfigError(f"dataset.path: no file at {str(p)!r}; give an existing .npz or .csv")
        suffix = p.suffix.lower()
        if suffix == ".npz":
            arrays = _load_npz(p, x, y)
        elif suffix == ".csv":
            arrays = _load_csv(p, x, y)
        else:
            raise ConfigError(f"dataset.path: {p.name} is neither .npz nor .csv; save the data in one of them")
        xs, ys = (_as_2d(arrays[k], k, p.name) for k in ("x", "y"))
        if xs.shape[0] != ys.shape[0]:
            raise ConfigError(
                f"dataset: {p.name} has {xs.shape[0]} rows of x but {ys.shape[0]} rows of y; give one target per input"
            )
        if xs.shape[0] < 2:
            raise ConfigError(f"dataset: {p.name} has {xs.shape[0]} row(s); at least 2 are needed")
        self.x, self.y = xs, ys
        self.uniform = bool(xs.shape[1] == 1 and _evenly_spaced(xs[:, 0]))


def _load_npz(p: Path, x, y) -> dict:
    if not isinstance(x, str) or not isinstance(y, str):
        raise ConfigError("dataset.x and dataset.y name one array each in a .npz file (a list is for .csv columns)")
    try:
        with np.load(p, allow_pickle=False) as f:
            names = list(f.files)
            missing = [k for k in (x, y) if k not in names]
            if missing:
                raise ConfigError(
                    f"dataset: {p.name} has no array named {missing[0]!r}; it holds {names}; "
                    f"set dataset.x / dataset.y to those names"
                )
            for key, name in (("x", x), ("y", y)):  # the size from the header, before reading the values
                shape = _npz_shape(p, name)
                if shape is not None:
                    limits.estimate_rows_bytes(int(np.prod(shape[:1] or (1,))), int(np.prod(shape[1:])), "dataset.path",
                                               f"{key} of {p.name} ({' × '.join(map(str, shape))})",
                                               "use a smaller file or a subset of its rows")
            return {"x": f[x], "y": f[y]}
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"dataset.path: cannot read {p.name} as .npz ({type(e).__name__}: {e})") from None


def _npz_shape(p: Path, name: str):
    """The shape an array of a .npz declares in its header (without reading the data)."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z, z.open(name + ".npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return read(fh)[0]
    except Exception:
        return None


def _load_csv(p: Path, x, y) -> dict:
    import csv

    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"dataset.path: {p.name} is {size / 2**30:.1f} GiB, more than fpdsl reads as text "
                          f"({MAX_FILE_BYTES / 2**30:.0f} GiB); save it as .npz (numpy.savez) instead")
    limits.estimate_rows_bytes(size // 4, 1, "dataset.path", f"{p.name} ({size / 2**20:.0f} MiB of text)",
                               "use a smaller file", copies=8.0)
    with open(p, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ConfigError(f"dataset.path: {p.name} is empty") from None
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    out = {}
    for key, cols in (("x", x), ("y", y)):
        cols = [cols] if isinstance(cols, str) else list(cols)
        missing = [c for c in cols if c not in header]
        if missing:
            raise ConfigError(
                f"dataset.{key}: {p.name} has no column {missing[0]!r}; its header is {header}; "
                f"set dataset.{key} to column names"
            )
        idx = [header.index(c) for c in cols]
        values = np.empty((len(rows), len(idx)))
        for i, r in enumerate(rows):
            for j, c in enumerate(idx):
                try:
                    values[i, j] = float(r[c])
                except (ValueError, IndexError):
                    cell = r[c] if c < len(r) else "<missing>"
                    raise ConfigError(
                        f"dataset.{key}: {p.name} row {i + 2} column {cols[j]!r} is {cell!r}, not a number"
                    ) from None
        out[key] = values
    return out


def _as_2d(a: np.ndarray, key: str, fname: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise ConfigError(f"dataset.{key}: {fname} holds {a.dtype} values for {key}; numbers are needed")
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ConfigError(
            f"dataset.{key}: {fname} has {key} of shape {a.shape}; give (n,) or (n, columns) (flatten images first)"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ConfigError(f"dataset.{key}: {fname} has {int(bad.sum())} NaN or infinite value(s) in {key} (first in row {row}); clean them")
    return np.ascontiguousarray(a)


def _evenly_spaced(v: np.ndarray) -> bool:
    d = np.diff(v)
    return bool(d.size and np.all(d > 0) and np.allclose(d, d.mean(), rtol=1e-6, atol=0))
