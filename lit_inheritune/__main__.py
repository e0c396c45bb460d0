"""`python -m lit_inheritune experiment=<name> [overrides]`: compose the config and run it."""

import hydra
from omegaconf import DictConfig

from lit_inheritune.config import CONFIG_DIR
from lit_inheritune.run import run


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
