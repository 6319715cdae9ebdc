"""The documented precedence of the config tree: defaults < experiment < recipe < baseline < command line."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from local.utils.hydra import compose

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "egs" / "mini_lime" / "conf"


def test_each_level_wins_over_the_ones_before_it(tmp_path):
    """sft.schedule is set by the paper (explicit), then by a recipe (linear), a baseline (no_cot: implicit) and
    the command line (mix): each wins over those before it, whatever the order of the overrides."""
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "toy.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: c2ser_tiny\nsft:\n  schedule: linear\n"
        "  trainer:\n    lr: 0.5\n")
    schedule = lambda *o: compose(list(o), recipe_conf=tmp_path).sft.schedule  # noqa: E731
    assert compose([]).sft.schedule == "explicit"                       # conf/stage/sft.yaml
    assert schedule("experiment=c2ser") == "explicit"
    assert schedule("recipe=toy", "experiment=c2ser") == "linear"         # the recipe after the paper
    assert schedule("baseline=no_cot", "recipe=toy", "experiment=c2ser") == "implicit"
    assert schedule("sft.schedule=mix", "baseline=no_cot", "recipe=toy", "experiment=c2ser") == "mix"
    cfg = compose(["experiment=c2ser", "recipe=toy"], recipe_conf=tmp_path)
    assert cfg.sft.trainer.lr == 0.5 and cfg.sft.trainer.weight_decay == 0.01  # merged, not replaced
    assert cfg.model.llm.config.hidden_size == 64  # the recipe's group override beats the paper's model=c2ser
    assert compose(["experiment=c2ser"]).model.llm.name_or_path == "Qwen/Qwen2-7B-Instruct"


def test_the_mini_recipe_is_the_one_place_for_sizes_and_budgets():
    """Every system composed with recipe=mini_lime gets the CPU sizes and budgets, and its corpus."""
    for system in ("c2ser", "ambiguity", "cogaudio"):
        cfg = compose([f"experiment={system}", "recipe=mini_lime"], recipe_conf=MINI)
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg.corpus.name == "mini_lime" and cfg.trainer.device == "cpu"
        assert cfg.model.llm.name_or_path is None and cfg.pretrain.size == "tiny"
        assert (cfg.sft.batch_size, cfg.sft.trainer.max_epochs, cfg.sft.trainer.lr) == (8, 6, 2e-3)
        assert cfg.rl.trainer.max_steps == 120
        assert cfg.rl.trainer.lr == cfg.rl.lr_per_algorithm[cfg.rl.algorithm]
        assert cfg.rl.sampling.max_new_tokens == cfg.decode.max_new_tokens[cfg.rl.target]
    assert not (MINI / "experiment").exists()  # no second place for them


def test_every_stage_runs_on_the_run_s_device_and_never_guesses():
    """run.sh sets device from --ngpu; no stage may pick a GPU by itself (decode.device used to be auto)."""
    def devices(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from ([(f"{path}{k}", v)] if k == "device" else devices(v, f"{path}{k}."))

    for system in ("c2ser", "cogaudio", "ambiguity"):
        for device in ("cpu", "cuda"):
            cfg = OmegaConf.to_container(compose([f"experiment={system}", f"device={device}"]), resolve=True)
            found = dict(devices(cfg))
            assert {"decode.device", "trainer.device", "probe.device", "e2v_extract.device",
                    "format.asr.device"} <= set(found)
            assert set(found.values()) == {device}, (system, found)
