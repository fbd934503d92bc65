"""Config validation, said once: every `_target_` node is checked against the target's own
signature (unknown keys, missing keys, types and ranges from its annotations, via pydantic),
and the run-level settings against RunSettings. Runs before anything is instantiated.
"""
from __future__ import annotations

import inspect
import os
import re
import typing
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fpdsl.errors import ConfigError

GROUPS = ("dataset", "model", "loss", "optimizer")
# arguments the runner supplies at instantiate time, never written in config
RUNTIME_ARGS = {"model": {"in_dim", "out_dim"}, "loss": {"data"}, "probe": {"data", "name", "optimizer"}}
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# run-level settings: every key must be present (conf/config.yaml gives them all)
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Budget(BaseModel):
    model_config = STRICT
    max_steps: Optional[Annotated[int, Field(ge=1, le=10**12)]]
    max_evals: Optional[Annotated[int, Field(ge=1, le=10**15)]]
    max_loss_drop: Optional[Annotated[float, Field(gt=0, le=1)]] = None


class Tracking(BaseModel):
    model_config = STRICT
    uri: Annotated[str, Field(min_length=1)]
    experiment: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
    every: Annotated[int, Field(ge=1)]
    per_decade: Optional[Annotated[int, Field(ge=1, le=1000)]] = None
    images_per_decade: Optional[Annotated[int, Field(ge=1, le=20)]] = None
    timeout: Annotated[float, Field(gt=0, le=3600)] = 15.0
    system_metrics: bool = False
    system_metrics_every: Annotated[float, Field(ge=1, le=3600)] = 10.0


class Checkpoint(BaseModel):
    model_config = STRICT
    every: Optional[Annotated[int, Field(ge=1)]]


class Figures(BaseModel):
    model_config = STRICT
    formats: Annotated[list[Literal["png", "pdf", "svg"]], Field(min_length=1)]
    dpi: Annotated[int, Field(ge=20, le=1200)]


class Claim(BaseModel):
    """What an experiment file claims: the report counts the seeds whose run has tag (or metric)
    `tag` starting with `expect`."""
    model_config = STRICT
    statement: Annotated[str, Field(min_length=1, max_length=300)]
    source: Annotated[str, Field(max_length=200)] = ""
    tag: Annotated[str, Field(min_length=1, max_length=200)]
    expect: Annotated[str, Field(min_length=1, max_length=200)]


class RunSettings(BaseModel):
    model_config = STRICT
    seed: Annotated[int, Field(ge=0, lt=2**32)]
    device: Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?|mps)$")]
    threads: Optional[Annotated[int, Field(ge=1, le=4 * _cores())]]
    progress: Literal["auto", "on", "off"]
    budget: Budget
    tracking: Tracking
    checkpoint: Checkpoint
    figures: Figures
    claim: Optional[Claim] = None
    resume: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]]


def validate(cfg: dict) -> None:
    """cfg: the resolved config as plain containers. Raises ConfigError naming the key."""
    for group in GROUPS:
        if group not in cfg or not isinstance(cfg[group], dict):
            raise ConfigError(f"{group}: missing; choose one, e.g. {group}=<option> (see conf/{group}/)")
        check_node(cfg[group], group, RUNTIME_ARGS.get(group, set()), group=group)
    probes = cfg.get("probe") or {}
    if not isinstance(probes, dict):
        raise ConfigError("probe: must be a dict of named probes, e.g. probe=[spectrum]")
    for name, node in probes.items():
        if not isinstance(node, dict):
            raise ConfigError(f"probe.{name}: must be a probe node with a _target_ (see conf/probe/)")
        if not re.fullmatch(r"[A-Za-z0-9_\-.]+", str(name)):
            raise ConfigError(f"probe.{name}: a probe's name becomes part of MLflow keys; use letters, digits, _ - .")
        check_node(node, f"probe.{name}", RUNTIME_ARGS["probe"], group="probe")
    run_level = {k: v for k, v in cfg.items() if k not in (*GROUPS, "probe")}
    try:
        RunSettings.model_validate(run_level)
    except ValidationError as e:
        raise ConfigError(_describe(e, prefix="", value=run_level)) from None
    budget = run_level["budget"]
    if budget.get("max_steps") is None and budget.get("max_evals") is None:
        raise ConfigError("budget: max_steps and max_evals are both null, so the run would never stop; "
                          "set budget.max_steps=<N> or budget.max_evals=<N>")


def _interface(group: str):
    """(check, description) of what a group's _target_ must be: a class implementing the group's
    interface. Anything else (a function such as torch.load or builtins.open, a class of the
    wrong kind) is refused before it is called."""
    def has(cls, *names):
        return all(any(n in vars(b) for b in cls.__mro__[:-1]) for n in names)

    if group == "model":
        import torch

        return (lambda c: issubclass(c, torch.nn.Module)), "a torch.nn.Module subclass"
    if group == "dataset":
        from fpdsl.data import Dataset

        return (lambda c: issubclass(c, Dataset)), "a subclass of fpdsl.data.Dataset"
    if group == "loss":
        return (lambda c: has(c, "__call__")), "a class whose instances are called as loss(h, y)"
    if group == "optimizer":
        return (lambda c: has(c, "run")), "a class with run(objective, budget, on_step) (fpdsl.optim)"
    return (lambda c: has(c, "observe", "finish")), "a class with observe(step, view) and finish() (fpdsl.probes)"


def check_node(node: dict, path: str, runtime: set[str] = frozenset(), group: str | None = None,
               admits=None) -> None:
    """One `_target_` node: the target is a class of the group's interface (or, nested, of the
    field's annotation), every key one of its arguments, every value of the annotated type."""
    if "_target_" not in node:
        raise ConfigError(f"{path}: no _target_; every config node names the class it builds")
    target = _locate(node["_target_"], path)
    if not inspect.isclass(target):
        raise ConfigError(f"{path}._target_: {node['_target_']!r} is not a class; a config builds objects of the "
                          "classes fpdsl expects, it never calls functions")
    if group is not None:
        ok, what = _interface(group)
        if not ok(target):
            raise ConfigError(f"{path}._target_: {node['_target_']!r} is not {what}")
    elif admits is not None and not admits(target):
        raise ConfigError(f"{path}._target_: {node['_target_']!r} is not a kind of object this field takes")
    for key in set(node) & (HYDRA_KEYS - {"_target_"}):
        raise ConfigError(f"{path}.{key}: Hydra's {key} is not used in fpdsl configs; remove it")
    if hasattr(target, "config_signature"):
        params, hints = target.config_signature(node)
        has_var_kw = False
    else:
        params, has_var_kw, hints = _signature(target)
    for key, value in node.items():
        if key in HYDRA_KEYS:
            continue
        if key in runtime:
            raise ConfigError(f"{path}.{key}: set by the runner (from the dataset); remove it from the config")
        if key not in params and not has_var_kw:
            allowed = ", ".join(k for k in params if k not in runtime) or "(none)"
            raise ConfigError(f"{path}.{key}: unknown key for {node['_target_']}; allowed: {allowed}")
        if isinstance(value, dict) and "_target_" in value:
            check_node(value, f"{path}.{key}", admits=_admits(hints.get(key)))
            continue
        _no_nested_targets(value, f"{path}.{key}")
        if key in hints:
            _check_value(hints[key], value, f"{path}.{key}")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in node and name not in runtime:
            raise ConfigError(f"{path}.{name}: required by {node['_target_']}; add {path}.{name}=<value>")


def _admits(annotation):
    """A check that a class builds objects this annotation takes (a class or a union of them);
    None of those: nothing is admitted."""
    classes = [a for a in _members(annotation) if inspect.isclass(a) and a is not type(None)]
    if not classes:
        return lambda c: False
    return lambda c: any(issubclass(c, a) for a in classes)


def _members(annotation):
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _no_nested_targets(value, path: str) -> None:
    """A `_target_` inside a list or plain dict would be built by Hydra without any check."""
    if isinstance(value, dict):
        if "_target_" in value:
            raise ConfigError(f"{path}._target_: objects are built only where a setting takes one; remove this node")
        for k, v in value.items():
            _no_nested_targets(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_nested_targets(v, f"{path}.{i}")


def _locate(target: str, path: str):
    from hydra.utils import get_object

    if not isinstance(target, str):
        raise ConfigError(f"{path}._target_: must be a dotted class name")
    try:
        return get_object(target)
    except Exception:
        raise ConfigError(f"{path}._target_: cannot import {target!r}; check the module and class name "
                          "(your own module must be importable: run from its folder or add it to PYTHONPATH)") from None


def _signature(target):
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return {}, True, {}
    params = {
        n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    }
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:
        hints = {}
    hints.pop("return", None)
    return params, has_var_kw, {k: v for k, v in hints.items() if v is not Any}


VALUES = ConfigDict(arbitrary_types_allowed=True, strict=True, allow_inf_nan=False)


def _check_value(annotation, value, key: str) -> None:
    """Strict: a boolean is not an integer, 1e3 is not an integer, NaN and ±inf are refused.
    YAML has no tuples, so a list may stand for one."""
    try:
        adapter = TypeAdapter(annotation, config=VALUES)
    except Exception:
        return  # an annotation pydantic cannot express; the target checks it itself
    try:
        adapter.validate_python(value)
    except ValidationError as e:
        try:
            adapter.validate_python(_tuples(value))
        except ValidationError:
            raise ConfigError(_describe(e, prefix=key, value=value)) from None


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _describe(e: ValidationError, prefix: str, value) -> str:
    err = e.errors()[0]
    # pydantic's loc mixes real keys and list indices with tags of union members
    # ("literal['a','b']", "str"); keep only the parts that name something in the value
    loc, node = [], value
    for part in err["loc"]:
        if isinstance(node, dict) and part in node:
            loc.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            loc.append(str(part))
            node = node[part]
    key = ".".join([prefix] + loc if prefix else loc) or prefix
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key; remove it or check its spelling"
    if err["type"] == "missing":
        key = ".".join([prefix] + [str(p) for p in err["loc"]] if prefix else [str(p) for p in err["loc"]])
        return f"{key}: missing; add {key}=<value>"
    got = err.get("input", node)
    return f"{key}: {msg[0].lower() + msg[1:]} (got {got!r})"

