"""Stage 7: Stage II implicit internalisation, from stage 6's model (see local/train/sft.py)."""
import logging

from omegaconf import DictConfig

from local.bin.stages import stage_run
from local.train.sft import run
from local.utils.hydra import entry_point

log = logging.getLogger("distill")


@entry_point
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "distill") as stage:
        if not cfg.distill.enabled:
            log.info("%s has no stage 7 (distill.enabled=false): decoding uses %s", cfg.exp_name, cfg.sft.exp_dir)
            return
        run(stage.cfg, stage.cfg.distill, fingerprint=stage.key)


if __name__ == "__main__":
    main()
