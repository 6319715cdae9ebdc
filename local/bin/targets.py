"""Stage 3: reasoning targets for every data set, from the configured teacher.

    python -m local.bin.targets teacher=openai teacher.model=gpt-4o targets.types=[eips]
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from local.bin.stages import stage_run
from local.reasoning.targets import make_targets
from local.reasoning.teacher import CachedTeacher, build_teacher
from local.utils.hydra import entry_point

log = logging.getLogger("targets")


@entry_point
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "targets") as stage:
        make_all(stage.cfg)


def make_all(cfg: DictConfig) -> None:
    teacher = build_teacher(OmegaConf.to_container(cfg.teacher, resolve=True))
    types = list(cfg.targets.types)
    log.info("teacher %s, target types %s", teacher.name, ", ".join(types))
    try:
        for name in dict.fromkeys([cfg.train_set, cfg.dev_set, *cfg.test_sets]):
            counts = make_targets(Path(cfg.data_root) / name, teacher, types,
                                  default_lang=cfg.corpus.default_lang)
            log.info("%s: %d targets written, %d rejected", name, counts["written"], counts["rejected"])
    finally:
        if isinstance(teacher, CachedTeacher):
            teacher.close()


if __name__ == "__main__":
    main()
