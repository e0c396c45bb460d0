"""`python -m lit_inheritune experiment=<name> [overrides]`: compose the config and run it.

Only Hydra is imported up front, so `--help` and a config error answer at once; the checks of
lit_inheritune/checks.py run (a Hydra callback) before the run directory exists, and torch and Lightning are
imported once the config is known to be good.
"""

import hydra
from omegaconf import DictConfig

from lit_inheritune.config import CONFIG_DIR
from lit_inheritune.errors import cli_errors, run_cli


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with cli_errors():
        from lit_inheritune.run import run

        run(cfg)


if __name__ == "__main__":
    run_cli(main)
