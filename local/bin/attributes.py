"""Stage 2: pitch, loudness and speaking rate of every utterance, binned Low / Medium / High.

μ and σ come from the train set only (written to data/<train_set>/attr_stats.json)
and bin every set, so dev and test levels mean the same as in training.
"""
from __future__ import annotations

import logging
from pathlib import Path

from local.data.attributes import AttributeSettings, add_attributes
from local.utils.hydra import entry_point

logger = logging.getLogger("attributes")


@entry_point
def main(cfg) -> None:
    settings = AttributeSettings.from_cfg(cfg.attributes)
    others = [cfg.dev_set, *cfg.test_sets]
    logger.info("attributes of %s (stats) and %s with pitch backend %s, nj=%d",
                cfg.train_set, " ".join(others), settings.pitch_backend, cfg.nj)
    summaries = add_attributes(Path(cfg.data_root), cfg.train_set, others, settings,
                               default_lang=cfg.corpus.default_lang, nj=cfg.nj)
    for name, summary in summaries.items():
        logger.info("%s: %s", name, summary)


if __name__ == "__main__":
    main()
