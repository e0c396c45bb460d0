"""`python -m lit_inheritune experiment=<name> [overrides]`: compose the config and run it.

Nothing heavy is imported up front, so `--help` and a config error answer at once: the checks of
lit_inheritune/checks.py run (a Hydra callback) before the run directory exists, and torch and Lightning are
imported once the config is known to be good.
"""

import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "conf"


def app_help() -> str:
    """`--help`: the hydra.help template of config.yaml, its config groups listed from conf/. Hydra renders the
    same text (tests/test_cli_errors.py compares the two), but only after importing itself, composing the config
    and deep-copying its config repository for every group it lists: 2-3 s on a busy 2-core machine."""
    import string

    from omegaconf import OmegaConf

    template = OmegaConf.load(CONFIG_DIR / "config.yaml").hydra.help.template
    groups = [d for d in sorted(CONFIG_DIR.iterdir()) if d.is_dir() and d.name != "hydra"]
    listing = "".join(f"{d.name}: {', '.join(sorted(p.stem for p in d.glob('*.yaml')))}\n" for d in groups)
    return string.Template(template).substitute(APP_CONFIG_GROUPS=listing)


def run_app() -> None:
    import hydra
    from omegaconf import DictConfig

    from lit_inheritune import config  # the schemas and resolvers the config needs
    from lit_inheritune.errors import cli_errors, run_cli

    @hydra.main(config_path=str(config.CONFIG_DIR), config_name="config", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        with cli_errors():
            from lit_inheritune.run import run

            run(cfg)

    run_cli(main)


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(app_help())
    else:
        run_app()
