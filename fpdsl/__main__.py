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
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option; available: {', '.join(sorted(e.options))}"
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        return f"{key}: no such key; check its spelling (a new key is added with +{key}=<value>)"
    m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m:
        return f"{m.group(1)}: already exists; set it without the leading +"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(e).__name__


def cli():
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    # Start-up (Hydra, torch, MLflow) leaves about 650 000 long-lived objects; the cyclic
    # collector would walk them again and again (about 1 s of start-up, 0.3 s a full
    # collection later). It stays off until training starts, when fpdsl.runner moves them
    # out of its reach (gc.freeze) and turns it back on.
    gc.disable()
    interrupt.install()
    # let composition errors reach us instead of Hydra's multi-line report
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as e:
        _fail(one_line(e))
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
