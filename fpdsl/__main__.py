"""fpdsl [overrides] — compose with Hydra, run, record in MLflow (also `python -m fpdsl`).

Bad input ends with one line on stderr naming the key and the fix, exit status 2,
before anything runs; a diverged or failed run ends FAILED with exit status 1; an
interrupted run ends KILLED with exit status 130 (SIGINT) or 143 (SIGTERM). In a
multirun a job with bad input or a diverged run fails alone: the other jobs run, then
the sweep exits with the same status; an interrupted sweep exits 130.
"""
import gc
import os
import re
import sys

import hydra
from omegaconf import DictConfig

from fpdsl import interrupt
from fpdsl.errors import ConfigError


@hydra.main(version_base="1.3", config_path="pkg://fpdsl.conf", config_name="config")
def main(cfg: DictConfig) -> str:
    from fpdsl.runner import Diverged, RunFailed, run

    try:
        return run(cfg)
    except ConfigError as e:
        print(f"fpdsl: error: {e}", file=sys.stderr)
        if _in_multirun():
            raise  # Hydra records this job as failed and the sweep's other jobs go on; cli() exits 2
        sys.exit(2)
    except (Diverged, RunFailed) as e:
        print(f"fpdsl: run failed: {e}", file=sys.stderr)
        if _in_multirun():
            raise
        sys.exit(1)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _fail(message: str):
    print(f"fpdsl: error: {message}", file=sys.stderr)
    sys.exit(2)


def one_line(e: BaseException) -> str:
    """Hydra's composition errors span several lines; say the same in one."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(e).strip()
    if isinstance(e, OverrideParseException):
        reason = (e.message.strip().splitlines() or ["malformed"])[0]
        return f"{e.override}: cannot parse this override ({reason}); write key=value, lists as [a,b], quote special characters"
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        import difflib

        group, _, option = str(e.missing_cfg_file).rpartition("/")
        options = sorted(e.options)
        if len(options) <= 12:
            return f"{group}={option}: no such option; available: {', '.join(options)}"
        close = difflib.get_close_matches(option, options, n=3, cutoff=0.4)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        return f"{group}={option}: no such option; {hint}({len(options)} options: fpdsl --help lists them)"
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        close = suggest(key)
        hint = f"did you mean {close}?" if close else f"check its spelling (a new key is added with +{key}=<value>)"
        return f"{key}: no such key; {hint}"
    m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m:
        return f"{m.group(1)}: already exists; set it without the leading +"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(e).__name__


def suggest(key: str) -> str | None:
    """The composed config's key closest to a mistyped one (the config the other overrides give)."""
    import difflib

    from omegaconf import OmegaConf

    from fpdsl.api import compose

    others = [a for a in sys.argv[1:] if "=" in a and not a.startswith(("-", key + "=", "+" + key + "=", "hydra"))]
    try:
        cfg = compose(others, with_hydra=False)
    except Exception:
        try:
            cfg = compose([], with_hydra=False)
        except Exception:
            return None
    keys = _keys(OmegaConf.to_container(cfg, resolve=False))
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # the right name under a wrong parent (optimizer.optimizer.lr → optimizer.lr)
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:1]
    return close[0] if close else None


def _keys(d, prefix=""):
    out = []
    for k, v in d.items():
        if str(k).startswith("_"):
            continue
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, dict):
            out += _keys(v, full + ".")
    return out


def sync(argv) -> int:
    """fpdsl sync [--uri URI]: send to the store what runs' write-ahead logs still hold (runs
    whose process is gone), and mark runs whose process died FAILED (crashed)."""
    import argparse

    from fpdsl.store import Store, StoreError

    ap = argparse.ArgumentParser(prog="fpdsl sync", description=sync.__doc__.splitlines()[0])
    ap.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a store that does not answer")
    a = ap.parse_args(argv)
    try:
        store = Store(a.uri, timeout=a.timeout)
    except StoreError as e:
        print(f"fpdsl: error: {e}", file=sys.stderr)
        return 2
    notes = store.recover()
    for note in notes:
        print(f"fpdsl: {note}")
    left = [d.name for d in store.log_root.iterdir()] if store.log_root.is_dir() else []
    print(f"fpdsl: sync: {len(notes)} run(s) updated; {len(left)} log(s) left in {store.log_root}"
          + (" (owned by live processes, or the store refused them)" if left else ""))
    return 0


class UnsafeCallback(ConfigError):
    pass


def _guard_callbacks():
    """Hydra builds `hydra.callbacks` before fpdsl sees the config: let it build only Callback
    classes (an experiment file could otherwise name any function there)."""
    import inspect

    from hydra._internal import callbacks
    from hydra.experimental.callback import Callback
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    original = callbacks.Callbacks.__init__

    def checked(self, config=None):
        if config is not None and OmegaConf.select(config, "hydra.callbacks"):
            for name, node in config.hydra.callbacks.items():
                target = node.get("_target_") if hasattr(node, "get") else None
                try:
                    cls = get_object(str(target))
                except Exception:
                    cls = None
                if not (inspect.isclass(cls) and issubclass(cls, Callback)):
                    raise UnsafeCallback(f"hydra.callbacks.{name}._target_: {target!r} is not a Hydra Callback class; remove it")
        original(self, config)

    callbacks.Callbacks.__init__ = checked


def cli():
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    # Start-up (Hydra, torch, MLflow) leaves about 650 000 long-lived objects; the cyclic
    # collector would walk them again and again (about 1 s of start-up, 0.3 s a full
    # collection later). It stays off until training starts, when fpdsl.runner moves them
    # out of its reach (gc.freeze) and turns it back on.
    if sys.argv[1:2] == ["sync"]:
        sys.exit(sync(sys.argv[2:]))
    if os.getcwd() not in sys.path:  # your own modules (a model class, a dataset) from the folder you run in,
        sys.path.insert(1, os.getcwd())  # as `python -m fpdsl` has them
    gc.disable()
    interrupt.install()
    _guard_callbacks()
    # let composition errors reach us instead of Hydra's multi-line report
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as e:
        _fail(one_line(e))
    except UnsafeCallback as e:
        _fail(str(e))
    except ConfigError:  # a job of a multirun; it said why, and the other jobs ran
        sys.exit(2)
    except interrupt.Interrupted as e:
        print(f"fpdsl: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("fpdsl: interrupted (SIGINT)", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        from fpdsl.runner import Diverged, RunFailed

        if isinstance(e, (Diverged, RunFailed)):
            sys.exit(1)
        raise
    from fpdsl.sweep import LAST

    if LAST["status"] == "KILLED":
        sys.exit(130)


if __name__ == "__main__":
    cli()
