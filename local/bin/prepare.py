"""Stage 0: the recipe's own ``prepare.py`` (run from the recipe dir), under a provenance record.

    cd egs/<corpus> && python -m local.bin.prepare corpus=<corpus>

A recipe's ``prepare.py`` knows its corpus and nothing of records; this entry
point runs its ``main(cfg)`` inside :func:`local.bin.stages.stage_run`, so that
run.sh re-runs stage 0 exactly when the corpus config, a file it names, or
prepare.py itself changed, and never when only a data dir was edited by hand.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import DictConfig

from local.bin.stages import stage_run
from local.utils.hydra import entry_point


def recipe_prepare(path: Path = Path("prepare.py")):
    if not path.is_file():
        raise FileNotFoundError(f"{path.resolve()}: no prepare.py; run stage 0 from the recipe dir (egs/<corpus>/)")
    spec = importlib.util.spec_from_file_location("recipe_prepare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@entry_point
def main(cfg: DictConfig) -> None:
    prepare = recipe_prepare()
    with stage_run(cfg, "prepare") as stage:
        prepare(stage.cfg)


if __name__ == "__main__":
    main()
