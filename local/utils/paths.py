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


def baseline_entries(cfg: DictConfig) -> dict[str, tuple[str, str]]:
    """{row: (experiment, decode dir template)} of the rows ``score.baselines`` asks for, ``{set}`` standing
    for the test set; the experiment is the entry's name under ``score.baselines``.

    An entry is a decode dir template (one row), ``{baseline, mode}`` (that baseline's decode of that mode,
    one row named as the entry) or ``{baseline, modes: [...]}`` (one row ``<entry>_<mode>`` per mode: a
    multi-task baseline is one line of config).  A baseline's rows are left out when it is not among
    ``baselines`` (the ones run.sh trained; null: all of them), so that ``run.sh --baselines ""`` gives the
    system's table alone.  An entry set to null is left out.
    """
    wanted = cfg.get("baselines")
    rows: dict[str, tuple[str, str]] = {}
    for entry, spec in (cfg.score.get("baselines") or {}).items():
        if spec is None:
            continue
        if isinstance(spec, str):
            rows[entry] = (entry, spec)
            continue
        has_mode, has_modes = spec.get("mode") is not None, spec.get("modes") is not None
        if has_mode == has_modes or not spec.get("baseline"):
            raise ValueError(f"score.baselines.{entry}: give a decode dir, or {{baseline: NAME, mode: MODE}}, or "
                             f"{{baseline: NAME, modes: [MODE, ...]}}, got {dict(spec)}")
        if wanted is not None and spec.baseline not in wanted:
            continue
        exp = Path(cfg.exp_root) / f"{cfg.system}_{spec.baseline}"
        if has_mode:
            rows[entry] = (entry, str(exp / f"decode_{{set}}_{spec.mode}"))
        else:
            rows.update({f"{entry}_{mode}": (entry, str(exp / f"decode_{{set}}_{mode}")) for mode in spec.modes})
    return rows


def baseline_rows(cfg: DictConfig) -> dict[str, str]:
    """{row: decode dir template} of :func:`baseline_entries`."""
    return {row: template for row, (_, template) in baseline_entries(cfg).items()}


def left_out_baselines(cfg: DictConfig) -> set[str]:
    """The entries of ``score.baselines`` that give no row in this run: set to null, or of a baseline run.sh
    did not train.  A table that names one of them lacks it by choice, not by a mistake."""
    kept = {experiment for experiment, _ in baseline_entries(cfg).values()}
    return set(cfg.score.get("baselines") or {}) - kept
