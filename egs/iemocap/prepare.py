"""Stage 0 of IEMOCAP: the release's sessions (local/data/corpora/iemocap.py), combined into the train,
dev and test sets of ``corpus.fold`` (local/data/corpora/sets.py).

Run from egs/iemocap (run.sh does):  python -m local.bin.prepare [hydra overrides]
"""
from __future__ import annotations

from omegaconf import DictConfig

from local.data.corpora.sets import prepare_recipe
from local.utils.hydra import entry_point


@entry_point
def main(cfg: DictConfig) -> None:
    prepare_recipe(cfg)


if __name__ == "__main__":
    main()
