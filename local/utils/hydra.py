"""Thin Hydra entry points that behave the same from run.sh, a shell and a test.

Every ``local/bin`` stage is ``@entry_point def main(cfg)``: the function can be
called with a composed config in a test (``main(cfg)``) or run as a script,
where Hydra composes ``conf/config.yaml`` with the recipe's ``conf/`` (the
current directory's, when it has one) on the search path.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from omegaconf import DictConfig

from local.utils.distributed import join_process_group

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _searchpath_override() -> list[str]:
    recipe_conf = Path.cwd() / "conf"
    if recipe_conf.is_dir() and recipe_conf.resolve() != CONF_DIR:
        return [f"hydra.searchpath=[file://{recipe_conf.resolve()}]"]
    return []


def entry_point(fn):
    """Turn ``fn(cfg)`` into a Hydra main that still accepts a config when called directly."""
    import hydra

    def joined(cfg: DictConfig):
        # Started by torchrun: join the process group before the stage does anything, so that what it
        # writes once (a tokenizer, a feature cache: local.utils.distributed) is written by one rank.
        join_process_group(str(cfg.get("device") or "cpu"))
        load_plugins(cfg)
        return fn(cfg)

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig | None = None):
        if cfg is not None:
            return joined(cfg)
        if not any(a.startswith("hydra.searchpath") for a in sys.argv[1:]):
            sys.argv[1:1] = _searchpath_override()
        return hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(functools.wraps(fn)(joined))()

    return wrapper


def load_plugins(cfg: DictConfig) -> list[str]:
    """Import the modules ``cfg.plugins`` names, before a stage reads its config: a system's own module
    registers its tasks, target types, rewards there (README, "Adding a system"), so a new system is
    configs plus one module and no edit of ours.  A module is found on ``sys.path``: the recipe dir, where
    the stages run, is on it (``python -m``), as is the repository."""
    import importlib

    names = list(cfg.get("plugins") or [])
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"plugins: cannot import '{name}' ({e}); a plugin is a module on the Python path, "
                              "e.g. a file <name>.py in the recipe dir") from e
    return names


def cli_overrides() -> list[str]:
    """The overrides given on the command line of the running Hydra app ([] when called as a function)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def compose(overrides: list[str] | None = None, recipe_conf: Path | str | None = None) -> DictConfig:
    """Compose the config as a stage would see it (for tests and notebooks)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    if recipe_conf is not None and Path(recipe_conf).resolve() != CONF_DIR:
        overrides.append(f"hydra.searchpath=[file://{Path(recipe_conf).resolve()}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    load_plugins(cfg)
    return cfg
