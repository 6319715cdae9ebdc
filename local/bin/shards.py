"""Stage 4: webdataset shards of every set, read by the training stages' loader.

    python -m local.bin.shards shards.max_shard_size=500 nj=8

Writes ``<dump_root>/<set>/shards/`` for the train, dev and test sets.  A set
whose shards match their inputs (tables, targets.jsonl, options) is skipped.
"""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate

from local.bin.stages import stage_run
from local.data.shards import write_shards
from local.utils.hydra import entry_point

log = logging.getLogger("shards")


@entry_point
def main(cfg) -> None:
    with stage_run(cfg, "shards") as stage:
        write_all(stage.cfg)


def write_all(cfg) -> None:
    opts = cfg.shards
    features = {name: instantiate(spec) for name, spec in opts.features.items()}
    for name in [cfg.train_set, cfg.dev_set, *cfg.test_sets]:
        data_dir = Path(cfg.data_root) / name
        targets = data_dir / "targets.jsonl"
        manifest = write_shards(
            data_dir, Path(cfg.dump_root) / name / "shards", opts.max_shard_size,
            targets_path=targets if targets.is_file() else None, features=features,
            audio_format=opts.audio_format, nj=cfg.nj,
            shuffle_seed=cfg.seed if opts.shuffle else None, force=opts.force)
        log.info("%s: %d utterances, %.2f h, %d shards, %d rejected", name, manifest["num_utts"],
                 manifest["hours"], len(manifest["shards"]), manifest["num_rejected"])


if __name__ == "__main__":
    main()
