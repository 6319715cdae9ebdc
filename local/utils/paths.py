"""Where the stages' files live, as pure functions of the config.

The stages themselves and the provenance check of run.sh (local/bin/stages.py)
must agree on these paths, and the check runs in a process that cannot afford
to import torch, so they live here, with nothing heavier than pathlib.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def all_sets(cfg: DictConfig) -> list[str]:
    """train_set, dev_set and test_sets, each once, in that order."""
    return list(dict.fromkeys([cfg.train_set, cfg.dev_set, *cfg.test_sets]))


def set_name(entry: str) -> str:
    """The name a test_sets entry goes by in decode dirs and tables: a path's last component."""
    return Path(entry).name


def shard_dir(cfg: DictConfig, name: str) -> Path:
    return Path(cfg.dump_root) / set_name(name) / "shards"


def previous_model(cfg: DictConfig) -> Path:
    """The model of the last SFT stage: stage 7's, or stage 6's for a system without stage 7."""
    return Path(cfg.distill.exp_dir if cfg.distill.enabled else cfg.sft.exp_dir) / "model"


def rl_start_model(cfg: DictConfig) -> Path:
    """The model stage 8 starts from: ``rl.init_from``, else the last SFT stage's."""
    return Path(cfg.rl.init_from) if cfg.rl.get("init_from") else previous_model(cfg)


def decode_model(cfg: DictConfig) -> Path:
    """The model stage 9 decodes: ``decode.model_dir``, else the last SFT stage's."""
    return Path(cfg.decode.model_dir) if cfg.decode.get("model_dir") else previous_model(cfg)


def decode_dir(cfg: DictConfig, entry: str, mode: str) -> Path:
    return Path(cfg.decode.exp_dir) / f"decode_{set_name(entry)}_{mode}"


def baseline_rows(cfg: DictConfig) -> dict[str, str]:
    """{row: decode dir, ``{set}`` standing for the test set} of the rows ``score.baselines`` asks for.

    A row is a decode dir template, or ``{baseline, mode}``: that baseline's decode of that mode, left out
    when the baseline is not among ``baselines`` (the ones run.sh trained; null: all of them), so that
    ``run.sh --baselines ""`` gives the system's table alone.  A row set to null is left out.
    """
    wanted = cfg.get("baselines")
    rows = {}
    for row, spec in (cfg.score.get("baselines") or {}).items():
        if spec is None:
            continue
        if isinstance(spec, str):
            rows[row] = spec
        elif wanted is None or spec.baseline in wanted:
            rows[row] = str(Path(cfg.exp_root) / f"{cfg.system}_{spec.baseline}" / f"decode_{{set}}_{spec.mode}")
    return rows
