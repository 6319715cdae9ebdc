"""Stage records: a stage is up to date exactly when the keys it reads and the content of its inputs are."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf.errors import ConfigAttributeError

from local.bin import stages
from local.bin.stages import STAGES, check, restrict, stage_run
from local.utils.digest import RECORD, path_digest, tree_digest
from local.utils.hydra import compose

from tests.conftest import make_data_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def layout(tmp_path):
    data = make_data_dir(tmp_path / "src", n_spk=2, n_utt=3)
    (tmp_path / "data").mkdir()
    for name in ("train", "dev", "test"):
        os.symlink(data, tmp_path / "data" / name)
    return tmp_path


def cfg_of(root: Path, *overrides: str):
    return compose([f"data_root={root / 'data'}", f"dump_root={root / 'dump'}", f"exp_root={root / 'exp'}",
                    "train_set=train", "dev_set=dev", "test_sets=[test]", *overrides])


def fake_shards(cfg) -> None:
    """A stand-in for stage 4's body: one manifest per set (the mechanism does not care what is in it)."""
    for name in ("train", "dev", "test"):
        out = Path(cfg.dump_root) / name / "shards"
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"size": cfg.shards.max_shard_size}))


def run_fake_shards(cfg) -> None:
    with stage_run(cfg, "shards") as run:
        fake_shards(run.cfg)


def test_a_stage_gets_only_the_keys_it_declares(layout):
    cfg = restrict(cfg_of(layout), STAGES["sft"])
    assert {"sft", "model", "trainer", "seed", "data_root", "train_set", "test_sets"} <= set(cfg)
    assert cfg.shards.max_shard_size == 200 and set(cfg.shards) == {"max_shard_size", "audio_format"}
    for undeclared in ("decode", "score", "teacher", "targets"):
        with pytest.raises(ConfigAttributeError):
            getattr(cfg, undeclared)


def test_every_declared_key_and_input_resolves_for_every_system():
    recipe = ROOT / "egs" / "mini_lime" / "conf"
    for system in ("c2ser", "ambiguity", "cogaudio"):
        cfg = compose([f"experiment={system}", "recipe=mini_lime"], recipe_conf=recipe)
        for name, stage in STAGES.items():
            if name == "prepare":
                continue  # its inputs are files of the recipe dir
            keys = [k for k in stage.reads(cfg) if stages.select(cfg, [k]) == {}]
            assert not keys, f"{system}: stage {name} declares keys the config lacks: {keys}"
            assert all(isinstance(v, str) for v in stage.inputs(cfg).values())
            restrict(cfg, stage)


def test_up_to_date_until_a_read_key_or_an_input_changes(layout):
    cfg = cfg_of(layout)
    first = check(cfg, "shards")
    assert not first.up_to_date and "no record of stage shards" in first.reasons[0]
    run_fake_shards(cfg)
    assert check(cfg, "shards").up_to_date

    assert check(cfg_of(layout, "nj=7", "shards.force=true"), "shards").up_to_date  # how, not what
    assert check(cfg_of(layout, "score.extract=llm", "sft.batch_size=3"), "shards").up_to_date  # keys it does not read
    edited = check(cfg_of(layout, "shards.max_shard_size=100"), "shards")
    assert not edited.up_to_date and edited.reasons == ["config shards.max_shard_size: 200 -> 100"]

    text = layout / "src" / "data" / "text"
    text.write_text(text.read_text().replace("number 1", "number one"))
    changed = check(cfg, "shards")
    assert not changed.up_to_date and any("input data/train changed" in r for r in changed.reasons)
    run_fake_shards(cfg)
    assert check(cfg, "shards").up_to_date

    (layout / "dump" / "dev" / "shards" / "manifest.json").write_text("{}")
    assert any("is not what the stage wrote" in r for r in check(cfg, "shards").reasons)


def test_a_failed_stage_leaves_no_record_and_a_record_never_holds_secrets(layout):
    cfg = cfg_of(layout)
    run_fake_shards(cfg)
    with pytest.raises(RuntimeError):
        with stage_run(cfg, "shards"):
            raise RuntimeError("killed")
    assert not check(cfg, "shards").up_to_date  # the old record went at the start, no new one was written

    secret = cfg_of(layout, "+teacher.api_key=sk-Zq8vX2secret", "+teacher.HF_TOKEN=sk-Zq8vX2secret")
    for d in stages.STAGES["targets"].records(secret):
        d.mkdir(parents=True, exist_ok=True)
    with stage_run(secret, "targets") as run:
        assert run.cfg.teacher.api_key  # the stage itself gets it ...
    written = "".join((layout / "data" / n / RECORD).read_text() for n in ("train", "dev", "test"))
    assert "sk-Zq8vX2secret" not in written and '"backend": "offline"' in written  # ... its record does not


def test_in_place_data_stages_keep_a_ledger(layout):
    """Stages 0-3 rewrite the data dirs: re-running one invalidates those after it, and a dir edited by hand
    makes stages 1-3 run again on it while stage 0 (which would overwrite the edit) stays done."""
    src = layout / "src" / "data"
    (layout / "data" / "train").unlink()
    (layout / "data" / "train").mkdir()
    for f in src.iterdir():
        (layout / "data" / "train" / f.name).write_bytes(f.read_bytes())
    cfg = cfg_of(layout, "dev_set=train", "test_sets=[train]")
    (layout / "prepare.py").write_text("# the recipe's stage 0\n")
    cwd = os.getcwd()
    os.chdir(layout)
    try:
        for name in ("prepare", "format", "attributes", "targets"):
            with stage_run(cfg, name):
                (layout / "data" / "train" / f"by_{name}").write_text(name)
        assert all(check(cfg, n).up_to_date for n in ("prepare", "format", "attributes", "targets"))
        ledger = json.loads((layout / "data" / "train" / RECORD).read_text())["stages"]
        assert [r["stage"] for r in ledger] == ["prepare", "format", "attributes", "targets"]

        with stage_run(cfg_of(layout, "dev_set=train", "test_sets=[train]", "format.max_dur=9"), "format"):
            pass
        assert not check(cfg, "format").up_to_date  # the record now says max_dur 9
        assert "no record of stage attributes" in check(cfg, "attributes").reasons[0]
        for name in ("format", "attributes", "targets"):
            with stage_run(cfg, name):
                pass

        (layout / "data" / "train" / "text").write_text("spk0-utt0 an edited transcript\n")
        assert check(cfg, "prepare").up_to_date
        for name in ("format", "attributes", "targets"):
            assert any("changed since stage targets wrote it" in r for r in check(cfg, name).reasons)

        (layout / "prepare.py").write_text("# the recipe's stage 0, edited\n")
        assert check(cfg, "prepare").reasons == ["input prepare.py changed"]
    finally:
        os.chdir(cwd)


def test_the_code_version_is_recorded_and_noted_but_does_not_decide(layout, monkeypatch):
    cfg = cfg_of(layout)
    run_fake_shards(cfg)
    record = json.loads((layout / "dump" / "train" / "shards" / RECORD).read_text())
    assert set(record["code"]) == {"commit", "dirty"} and record["key"] and record["finished"]
    assert record["outputs"] == {str(layout / "dump/train/shards/manifest.json"):
                                 path_digest(layout / "dump/train/shards/manifest.json")}

    def fake_sft(run):
        model = Path(run.cfg.sft.exp_dir) / "model"
        model.mkdir(parents=True)
        (model / "trained.pt").write_bytes(b"weights")

    with stage_run(cfg, "sft") as run:
        fake_sft(run)
    sft = Path(cfg.sft.exp_dir)
    assert json.loads((sft / RECORD).read_text()) == json.loads((sft / "model" / RECORD).read_text())
    assert check(cfg, "sft").up_to_date  # the model's own copy of the record is not part of its digest
    monkeypatch.setattr(stages, "code_version", lambda: {"commit": "0123456789abcdef", "dirty": False})
    result = check(cfg, "shards")
    assert result.up_to_date and "the code is now 0123456789" in result.notes[0]


def test_directory_digests_follow_content_not_names_or_times(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "x.txt").write_text("same")
    (b / RECORD).write_text("records do not count")
    (b / ".lock").write_text("nor hidden files")
    assert tree_digest(a) == tree_digest(b)
    os.utime(b / "sub" / "x.txt", (0, 0))
    assert tree_digest(a) == tree_digest(b)
    (b / "sub" / "x.txt").write_text("other")
    assert tree_digest(a) != tree_digest(b)


def test_the_stamp_command_answers_without_importing_torch(layout):
    args = [f"data_root={layout / 'data'}", f"dump_root={layout / 'dump'}", "test_sets=[test]"]
    code = ("import sys, runpy; sys.argv = ['stamp', *sys.argv[1:]]; "
            "from local.bin.stamp import main; rc = main(); "
            "assert 'torch' not in sys.modules, 'stamp imported torch'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "shards", *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "no record of stage shards" in out.stdout, out.stderr
    run_fake_shards(cfg_of(layout))
    out = subprocess.run([sys.executable, "-c", code, "shards", *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-m", "local.bin.stamp", "shards", "shards.nope=1"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and "does not compose" in out.stderr


def test_stage_0_of_a_real_corpus_reads_its_preparers_source():
    """Editing local/data/corpora/<preparer>.py re-runs stage 0, as editing a recipe's prepare.py does."""
    cfg = compose(["corpus=iemocap"], recipe_conf=ROOT / "egs" / "iemocap" / "conf")
    inputs = STAGES["prepare"].inputs(cfg)
    assert Path(inputs["preparer"]) == ROOT / "local" / "data" / "corpora" / "iemocap.py"
    assert "preparer" not in STAGES["prepare"].inputs(compose([]))  # mini_lime brings its prepare.py
