"""Sizes and devices checked before anything large is allocated.

A run that would not fit is refused with the estimate and the key to change, before any
compute and before any store is touched. Estimates are deliberately rough (within a
small factor) and conservative; MEMORY_FRACTION of the memory available now is the limit.
"""
from __future__ import annotations

import os

from fpdsl.errors import ConfigError

MEMORY_FRACTION = 0.8
GiB = 2.0**30


def available_bytes() -> float:
    """Memory available to this process now (MemAvailable, capped by a cgroup limit)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = float(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
            if text.isdigit():
                avail = min(avail, float(text))
        except OSError:
            continue
    return avail


def check_bytes(need: float, key: str, what: str, fix: str) -> None:
    """Refuse when need bytes exceed the limit: '<key>: <what> needs about X GiB, ...; <fix>'."""
    limit = MEMORY_FRACTION * available_bytes()
    if need > limit:
        raise ConfigError(f"{key}: {what} needs about {need / GiB:.3g} GiB but {limit / GiB:.3g} GiB are available; {fix}")


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda asked for but no GPU is visible; use device=cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {device} asked for but only {torch.cuda.device_count()} GPU(s) are visible; "
                              f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("device: mps (Apple GPU) is not available in this torch build or machine; use device=cpu")


def check_data(data) -> None:
    import numpy as np

    for name in ("x", "y"):
        a = getattr(data, name, None)
        if a is None:
            raise ConfigError(f"dataset: {type(data).__name__} has no attribute {name!r}; a dataset gives x (n, d) and y (n, c)")
        a = np.asarray(a)
        if a.ndim != 2:
            raise ConfigError(f"dataset: {name} has shape {a.shape}; a dataset gives x (n, d) and y (n, c)")
        if a.dtype.kind not in "biuf" or not np.all(np.isfinite(a)):
            bad = "inputs" if name == "x" else "targets"
            raise ConfigError(f"dataset: the {bad} ({name}) hold NaN or infinite values; check the dataset's "
                              "settings (interval, amplitudes, frequencies) or its file")
    if len(data.x) != len(data.y):
        raise ConfigError(f"dataset: {len(data.x)} inputs but {len(data.y)} targets; give one target per input")


def check_model(cfg, data, dtype, meta_model) -> None:
    """Parameters counted on torch's meta device (no memory), then the run's memory estimated:
    parameters and their optimizer copies, activations over the data, a population."""
    import torch

    model = meta_model()
    sizes = [p.numel() for p in model.parameters()]
    P = sum(sizes)
    if P == 0:
        raise ConfigError("model: it has no parameters to train; check the model's settings")
    widest = max([data.x.shape[1], data.y.shape[1]] + [max(p.shape) for p in model.parameters() if p.dim()])
    layers = sum(1 for p in model.parameters() if p.dim() >= 2) or 1
    b = torch.tensor([], dtype=dtype).element_size()
    n = data.x.shape[0]
    params = P * 8 * 6.0  # θ, gradient, optimizer moments, copies for probes and checkpoints
    acts = n * widest * b * (2 * layers + 2)  # one forward pass kept for the backward pass
    key = "model.width" if "width" in cfg.model else "model"
    fix = "lower model.width (or depth)" if key == "model.width" else "choose a smaller model"
    check_bytes(params, key, f"a model of {P:,} parameters", fix)
    wide_model = widest > max(data.x.shape[1], data.y.shape[1])  # the widest layer is the model's own
    check_bytes(params + acts, key if wide_model else "dataset",
                f"{P:,} parameters with activations over {n:,} points ({widest:,} wide)",
                fix if wide_model else "use fewer points (dataset.n_points / n_samples) or a narrower model")
    pop = cfg.optimizer.get("popsize")
    if isinstance(pop, int):
        check_bytes(pop * P * b * 6.0 + params, "optimizer.popsize",
                    f"a population of {pop:,} × {P:,} parameters", "lower optimizer.popsize or the model's size")
    method = str(cfg.optimizer.get("method", "")).lower()
    if method == "bfgs":
        check_bytes(3.0 * P * P * 8, key, f"BFGS's dense {P:,} × {P:,} inverse Hessian",
                    "use optimizer=lbfgsb (linear in the parameters) or a smaller model")


def estimate_rows_bytes(rows: int, cols: int, key: str, what: str, fix: str, copies: float = 4.0) -> None:
    """Data of rows × cols float64 values (with a few copies while it is built)."""
    check_bytes(rows * cols * 8.0 * copies, key, what, fix)
