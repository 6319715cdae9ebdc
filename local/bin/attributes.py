"""Stage 2: pitch, loudness and speaking rate of every utterance, binned Low / Medium / High.

μ and σ come from the train set only (written to data/<train_set>/attr_stats.json)
and bin every set, so dev and test levels mean the same as in training.  Test
sets (cfg.test_sets) keep the utterances whose attributes cannot be measured,
with ``unknown`` levels; train and dev reject them (see local/data/attributes.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

from local.bin.stages import stage_run
from local.data.attributes import AttributeSettings, add_attributes
from local.utils.hydra import entry_point

logger = logging.getLogger("attributes")


@entry_point
def main(cfg) -> None:
    with stage_run(cfg, "attributes") as stage:
        measure_sets(stage.cfg)


def measure_sets(cfg) -> None:
    settings = AttributeSettings.from_cfg(cfg.attributes)
    others = [cfg.dev_set, *cfg.test_sets]
    # a set that is also the train or dev set is filtered as such, as stage 1 does
    test_sets = [name for name in cfg.test_sets if name not in (cfg.train_set, cfg.dev_set)]
    logger.info("attributes of %s (stats) and %s with pitch backend %s, nj=%d",
                cfg.train_set, " ".join(others), settings.pitch_backend, cfg.nj)
    summaries = add_attributes(Path(cfg.data_root), cfg.train_set, others, settings,
                               default_lang=cfg.corpus.default_lang, nj=cfg.nj, test_sets=test_sets)
    for name, summary in summaries.items():
        logger.info("%s: %s", name, summary)


if __name__ == "__main__":
    main()
