"""Stage 0: the corpus' preparer and folds (``corpus.preparer``), or the recipe's own ``prepare.py``
(run from the recipe dir), under a provenance record.

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
from local.data.corpora.sets import prepare_extra_test_sets, prepare_recipe
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
    # A real corpus names its preparer (local/data/corpora/<preparer>.py) and its folds in the corpus
    # config; a corpus of its own making (mini_lime) brings a prepare.py.
    prepare = prepare_recipe if cfg.corpus.get("preparer") else recipe_prepare()
    with stage_run(cfg, "prepare") as stage:
        prepare(stage.cfg)
        prepare_extra_test_sets(stage.cfg)  # parts of other corpora, for cross-corpus test sets


if __name__ == "__main__":
    main()
