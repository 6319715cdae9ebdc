"""Stage 8: Stage III policy optimisation (GRPO, GRPOz, SAPO, DR-SAPO, on-policy DPO); see local/train/rl/stage.py.

    python -m local.bin.rl experiment=ambiguity rl.algorithm=dpo
    python -m local.bin.rl experiment=cogaudio judge=openai judge.base_url=http://localhost:8000/v1

Re-running resumes from ``<rl.exp_dir>/checkpoints/last.pt`` when it was written under the same fingerprint
(local/bin/stages.py).
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from local.bin.stages import stage_run
from local.eval.judge import build_judge
from local.train.rl.stage import run
from local.utils.hydra import entry_point

log = logging.getLogger("rl")


@entry_point
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "rl") as stage:
        if not cfg.rl.enabled:
            log.info("%s has no stage 8 (rl.enabled=false): decoding uses the model of stage %s", cfg.exp_name,
                     7 if cfg.distill.enabled else 6)
            return
        cfg = stage.cfg
        judge = (build_judge(OmegaConf.to_container(cfg.judge, resolve=True))
                 if cfg.rl.reward.kind == "dual_route" else None)
        try:
            run(cfg, judge, fingerprint=stage.key)
        finally:
            if judge is not None and hasattr(judge, "close"):
                judge.close()


if __name__ == "__main__":
    main()
