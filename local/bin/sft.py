"""Stage 6: Stage I explicit reasoning SFT (see local/train/sft.py)."""
import logging

from omegaconf import DictConfig

from local.bin.stages import stage_run
from local.train.sft import run
from local.utils.hydra import entry_point

log = logging.getLogger("sft")


@entry_point
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "sft") as stage:
        if not cfg.sft.enabled:  # a variant that starts from another experiment's model
            log.info("%s trains no stage 6 (sft.enabled=false)", cfg.exp_name)
            return
        run(stage.cfg, stage.cfg.sft, fingerprint=stage.key)


if __name__ == "__main__":
    main()
