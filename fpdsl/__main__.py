"""python -m fpdsl [overrides] — compose with Hydra, run, record in MLflow."""
import sys

import hydra
from omegaconf import DictConfig

from fpdsl.errors import ConfigError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from fpdsl.runner import run

    try:
        return run(cfg)
    except ConfigError as e:
        print(f"fpdsl: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
