"""fpdsl: declarative experiments on how neural networks learn in frequency space.

    import fpdsl
    run_id = fpdsl.run(["experiment=fprinciple_adam", "seed=1"])
    r = fpdsl.load(run_id)          # r.config, r.history["spectrum/delta_complex"], r.theta, r.output
    frame = fpdsl.runs(experiment="fprinciple")
"""

__version__ = "0.2.0"

from fpdsl.api import Run, compose, load, run, runs  # noqa: E402
from fpdsl.errors import ConfigError  # noqa: E402

__all__ = ["ConfigError", "Run", "compose", "load", "run", "runs"]
