"""Stage 5: pre-train Emotion2Vec-S on the training shards (Emotion2Vec-F with pretrain.lambda_cate=0).

    python -m local.bin.pretrain pretrain.size=tiny pretrain.trainer.max_steps=300
    python -m local.bin.pretrain pretrain.lambda_cate=0 pretrain.exp_dir=exp/e2vf

Re-running resumes from ``<exp_dir>/checkpoints/last.pt`` when it was written under the same config and
shards (local/bin/stages.py); see :mod:`local.train.pretrain`.
"""
from __future__ import annotations

import logging

from local.bin.stages import stage_run
from local.train.pretrain import run
from local.utils.hydra import entry_point

logger = logging.getLogger("pretrain")


@entry_point
def main(cfg) -> None:
    with stage_run(cfg, "pretrain") as stage:
        metrics = run(stage.cfg, fingerprint=stage.key)
    logger.info("done: %s", " | ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    main()
