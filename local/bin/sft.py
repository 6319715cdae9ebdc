"""Stage 6: Stage I explicit reasoning SFT (see local/train/sft.py)."""
from omegaconf import DictConfig

from local.train.sft import run
from local.utils.hydra import entry_point


@entry_point
def main(cfg: DictConfig) -> None:
    run(cfg, cfg.sft)


if __name__ == "__main__":
    main()
