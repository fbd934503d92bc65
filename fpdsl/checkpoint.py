"""Checkpoints: plain data only, loaded with torch.load(weights_only=True).

A checkpoint holds tensors, numbers, strings, lists, tuples and dicts of them; numpy
arrays travel as tensors marked {"__ndarray__": tensor}, numpy scalars as Python
numbers, and a long list of numbers or of same-shaped arrays (the trace, a probe's
history) as one marked tensor. Nothing in it can name code, so a checkpoint from someone else cannot run
anything when it is loaded. Each save keeps the one before it as `previous.pt`: a
`last.pt` cut short (a crash while it was copied) is reported, and resume falls back.
"""
from __future__ import annotations

import io

import numpy as np
import torch

FOLDER = "checkpoint"
LAST, PREVIOUS = "last.pt", "previous.pt"


class CheckpointError(ValueError):
    pass


def to_plain(value):
    """value with numpy arrays as marked tensors and numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufc":
            return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)).clone()}
        if value.dtype.kind in "US":
            return {"__strings__": [str(v) for v in value.ravel()], "shape": list(value.shape)}
        raise CheckpointError(f"cannot keep an array of {value.dtype} in a checkpoint")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 8:
        packed = _pack(value)  # a long history as one tensor: pickling item by item grew with the run
        if packed is not None:
            return packed
    if isinstance(value, (list, tuple)):
        out = [to_plain(v) for v in value]
        return out if isinstance(value, list) else tuple(out)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot keep a {type(value).__name__} in a checkpoint")


def _pack(items: list):
    """A list of plain numbers (the trace) or of same-shaped numeric arrays (a probe's history) as
    one marked tensor; None for anything else."""
    first = items[0]
    if all(type(v) is float for v in items):
        return {"__floats__": torch.tensor(items, dtype=torch.float64)}
    if all(type(v) is int for v in items):
        return {"__ints__": torch.tensor(items, dtype=torch.int64)}
    if isinstance(first, np.ndarray) and first.dtype.kind in "biuf" and all(
            isinstance(v, np.ndarray) and v.shape == first.shape and v.dtype == first.dtype for v in items):
        return {"__arrays__": torch.from_numpy(np.stack(items))}
    return None


def from_plain(value):
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        if set(value) == {"__floats__"} or set(value) == {"__ints__"}:
            return next(iter(value.values())).tolist()
        if set(value) == {"__arrays__"}:
            return list(value["__arrays__"].numpy())
        if set(value) == {"__strings__", "shape"}:
            return np.array(value["__strings__"]).reshape(value["shape"])
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(from_plain(v) for v in value)
    return value


def dumps(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(to_plain(state), buf)
    return buf.getvalue()


def loads(data: bytes, what: str = "checkpoint") -> dict:
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what} is corrupt or not an fpdsl checkpoint ({first})") from None
    if not isinstance(state, dict) or "step" not in state or "theta" not in state:
        raise CheckpointError(f"{what} is not an fpdsl checkpoint (no step and θ in it)")
    return from_plain(state)
