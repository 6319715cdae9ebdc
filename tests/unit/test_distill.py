"""Stage 7 (local/bin/distill.py): off, it trains nothing; on, it continues from stage 6's model
(distill.init_from) and writes <distill.exp_dir>/model, which load_alm loads."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from helpers.sft_recipe import stage_overrides, write_recipe
from local.bin.distill import main as distill_main
from local.bin.sft import main as sft_main
from local.models.alm import build_alm, load_alm
from local.train.sft import make_tokenizer
from local.utils.hydra import compose


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return write_recipe(tmp_path_factory.mktemp("distill"))


def config(recipe, exp_name, *extra):
    return compose(stage_overrides(recipe, exp_name, "seed=1", "trainer.max_steps=3", *extra))


@pytest.fixture(scope="module")
def stage6(recipe):
    """Stage 6 of experiment "sys", trained far enough (lr 1e-2) that its weights are not the initial ones."""
    cfg = config(recipe, "sys", "trainer.lr=1e-2", "trainer.warmup=0", "trainer.schedule=constant")
    sft_main(cfg)
    return Path(cfg.sft.exp_dir) / "model"


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_disabled_stage7_trains_nothing_and_says_so(recipe, caplog):
    cfg = config(recipe, "off", "distill.enabled=false")
    caplog.set_level(logging.INFO)
    distill_main(cfg)
    assert not Path(cfg.distill.exp_dir).exists()  # no model, no checkpoints, no metrics
    assert not (Path(cfg.distill.exp_dir) / "model").exists()
    assert any("distill.enabled=false" in r.getMessage() for r in caplog.records), caplog.text


def test_stage7_starts_from_the_stage6_model(recipe, stage6):
    """At lr 0 one step changes nothing: the model stage 7 writes is stage 6's, tensor for tensor."""
    cfg = config(recipe, "sys", "trainer.max_steps=1", "trainer.lr=0")
    assert Path(cfg.distill.init_from) == stage6  # the default: continue from stage 6
    distill_main(cfg)
    written = Path(cfg.distill.exp_dir) / "model"
    assert written.is_dir()
    start = state(load_alm(stage6))
    assert differing(state(load_alm(written)), start) == []
    # and that is not what a fresh model would be: stage 6 did move the weights
    fresh = state(build_alm(cfg.model, tokenizer=make_tokenizer(cfg, cfg.sft)))
    assert differing(fresh, start)


def test_stage7_writes_the_model_it_trained(recipe, stage6):
    cfg = config(recipe, "sys", "distill.exp_dir=${exp_root}/${exp_name}/distill_lr", "trainer.lr=1e-2")
    distill_main(cfg)
    exp_dir = Path(cfg.distill.exp_dir)
    trained = state(load_alm(exp_dir / "model"))
    assert differing(trained, state(load_alm(stage6)))  # it trained
    last = torch.load(exp_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["step"] == 3
    common = [k for k in last["model"] if k in trained]
    assert common and [k for k in common if not torch.equal(last["model"][k], trained[k])] == []


def test_stage7_without_a_stage6_model_fails_naming_it(recipe):
    cfg = config(recipe, "never_ran_stage6")
    with pytest.raises(Exception, match=str(Path(cfg.distill.init_from))):
        distill_main(cfg)
    assert not (Path(cfg.distill.exp_dir) / "model").exists()
