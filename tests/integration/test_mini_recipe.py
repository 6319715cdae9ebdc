"""The mini_lime recipe end to end through run.sh and the real stage code, as a user runs it.

This is the slow test (about 15 minutes on 2 cores): it synthesises the whole corpus, then runs stages 4-10
on half of its train set with CI-sized budgets, and edits, retrains and re-runs the way a researcher does: a run
must retrain exactly what the edit touched, skip the rest in seconds, and never decode a model with another
encoder than it was trained with.  Outputs go to a temporary dir, so a developer's own
egs/mini_lime/{data,dump,exp} stay untouched.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from local.data.kaldi import DataDir, parse_dist, parse_kv, validate_data_dir
from local.data.labels import EMOTIONS

ROOT = Path(__file__).resolve().parents[2]
TARGET_TYPES = {"c2ser_explicit", "c2ser_implicit", "eips", "direct_response", "ambiguity_cot",
                "summarize", "elaborate", "summarize_sr", "elaborate_sr", "label_only", "label_only_sr", "asr", "sqa"}


def run_recipe(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINI_LIME=str(tmp / "db"))
    cmd = ["egs/mini_lime/run.sh", "--data_root", str(tmp / "data"), "--dump_root", str(tmp / "dump"),
           "--exp_root", str(tmp / "exp"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mini_lime")
    first = run_recipe(tmp, "--stop_stage", "4")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tmp, first


def test_data_dirs_meet_the_corpus_spec(recipe):
    tmp, _ = recipe
    sets = {name: validate_data_dir(tmp / "data" / name) for name in ("train", "dev", "test")}
    assert sum(len(d) for d in sets.values()) >= 3000
    renderings = defaultdict(set)
    for data in sets.values():
        assert set(data["utt2emo"].values()) == set(EMOTIONS)
        assert set(data["utt2dist"]) == set(data.utts)
        for utt in data.utts:
            renderings[data["text"][utt]].add(data["utt2emo"][utt])
            assert abs(sum(parse_dist(data["utt2dist"][utt]).values()) - 1) < 1e-3
            levels = parse_kv(data["utt2attr"][utt])
            assert {levels[k] for k in ("pitch", "loudness", "rate")} <= {"Low", "Medium", "High"}
    assert all(emotions == set(EMOTIONS) for emotions in renderings.values())
    assert set(sets["test"]["utt2subset"].values()) == {"consistent", "conflict", "neutral_text"}
    # train: 6 speakers × 22 texts; dev and test: 2 unseen speakers each × all 27 texts (heldout ones too)
    spk = {name: set(data["utt2spk"].values()) for name, data in sets.items()}
    txt = {name: set(data["text"].values()) for name, data in sets.items()}
    assert (len(spk["train"]), len(spk["dev"]), len(spk["test"])) == (6, 2, 2)
    assert not spk["train"] & spk["dev"] and not spk["train"] & spk["test"] and not spk["dev"] & spk["test"]
    assert len(txt["train"]) == 22 and txt["dev"] == txt["test"] and len(txt["dev"]) == 27
    assert {name: len(data) for name, data in sets.items()} == {"train": 2772, "dev": 1134, "test": 1134}
    assert json.loads((tmp / "data/train/attr_stats.json").read_text())


def test_targets_and_shards(recipe):
    tmp, _ = recipe
    for name in ("train", "dev", "test"):
        with open(tmp / "data" / name / "targets.jsonl", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        assert {r["type"] for r in records} == TARGET_TYPES
        manifest = json.loads((tmp / "dump" / name / "shards" / "manifest.json").read_text())
        assert manifest["num_utts"] == len(DataDir.load(tmp / "data" / name))


def test_run_prints_summary_and_second_run_skips_everything(recipe):
    tmp, first = recipe
    for row in ("| train | 2772 |", "| dev | 1134 |", "| test | 1134 |"):
        assert row in first.stdout
    second = run_recipe(tmp, "--stop_stage", "4")
    assert second.returncode == 0, second.stderr[-2000:]
    for n, name in enumerate(("prepare", "format", "attributes", "targets", "shards")):
        assert f"Stage {n} ({name}, data): up to date, skipped" in second.stdout
    assert "run_history.sh" in os.listdir(tmp / "exp")


# --- stages 5-10 on half the train set ------------------------------------------------------

SUBSETS = (("train", "train_s", 2), ("dev", "dev_s", 8), ("test", "test_s", 4))  # 1386 / 142 / 284 utterances
SMALL = ("--train_set", "train_s", "--dev_set", "dev_s", "--test_sets", "test_s", "--baselines", "")
# CI budgets, written into the recipe's own yaml, the one place for them (egs/mini_lime/conf/recipe/)
BUDGETS = (("    max_steps: 300 ", "    max_steps: 60 "), ("  ema_anneal_steps: 300 ", "  ema_anneal_steps: 60 "),
           ("    max_epochs: 3\n    warmup", "    max_epochs: 1\n    warmup"))  # distill; SFT keeps its 6 epochs


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r} appears {text.count(old)} times"
    path.write_text(text.replace(old, new))


def run_model_stages(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """run.sh from a copy of the recipe dir (tmp/recipe: its conf/ can be edited), on the data of the fixture."""
    env = dict(os.environ, MINI_LIME=str(tmp / "db"), EMOREASON_RECIPE="mini_lime")
    cmd = [str(ROOT / "run.sh"), "--data_root", str(tmp / "data"), "--dump_root", str(tmp / "dump"),
           "--exp_root", str(tmp / "exp"), *SMALL, *args]
    out = subprocess.run(cmd, cwd=tmp / "recipe", env=env, capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def stage_lines(out: subprocess.CompletedProcess) -> dict[str, str]:
    """{"6 sft c2ser": "ran" | "skipped"} from run.sh's log."""
    found = {}
    for n, name, tag, what in re.findall(r"Stage (\d+) \((\w+), (\w+)\)(?::| runs,) (up to date|because)",
                                         out.stdout):
        found[f"{n} {name} {tag}"] = "skipped" if what == "up to date" else "ran"
    return found


def decode_command(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [f"data_root={tmp / 'data'}", f"dump_root={tmp / 'dump'}", f"exp_root={tmp / 'exp'}", "corpus=mini_lime",
            "recipe=mini_lime", "experiment=c2ser", "train_set=train_s", "dev_set=dev_s", "test_sets=[test_s]",
            *overrides]
    return subprocess.run([sys.executable, "-m", "local.bin.decode", *args], cwd=tmp / "recipe", capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def model_recipe(recipe):
    tmp, _ = recipe
    for src, dst, every in SUBSETS:
        subprocess.run([sys.executable, "-m", "local.bin.subset", str(tmp / "data" / src), str(tmp / "data" / dst),
                        "--every", str(every)], cwd=ROOT, check=True, capture_output=True)
    shutil.copytree(ROOT / "egs" / "mini_lime" / "conf", tmp / "recipe" / "conf")
    shutil.copy(ROOT / "egs" / "mini_lime" / "prepare.py", tmp / "recipe" / "prepare.py")
    for old, new in BUDGETS:
        edit(tmp / "recipe" / "conf" / "recipe" / "mini_lime.yaml", old, new)
    first = run_model_stages(tmp, "--stage", "4", "--e2v_table", "true",
                             "--probe_args", "probe.seeds=[0] probe.trainer.max_epochs=3")
    return tmp, first


def test_stages_5_to_10_run_end_to_end_well_above_chance(model_recipe):
    tmp, first = model_recipe
    ran = stage_lines(first)
    assert all(ran[k] == "ran" for k in ("4 shards data", "5 pretrain e2vs", "5 pretrain e2vf", "5 probe probe",
                                         "6 sft c2ser", "7 distill c2ser", "9 decode c2ser", "10 score c2ser"))
    probe = (tmp / "exp" / "probe" / "results.md").read_text()  # C²SER Table V's analogue, from run.sh
    assert all(f"| {row} |" in probe for row in ("Emotion2Vec-S", "Emotion2Vec-F", "Untrained init"))
    results = json.loads((tmp / "exp" / "c2ser" / "results.json").read_text())
    for mode in ("implicit", "explicit"):
        row = results["tables"]["test_s"][mode]
        assert row["n"] == 284 and row["rejected"] == 0
        assert row["ua"] > 0.30, f"{mode}: UA {row['ua']} on 7 classes (chance 0.143)"
    provenance = results["provenance"]
    assert provenance["code"]["commit"] and provenance["tables"]["test_s"]["rows"]["implicit"]["device"] == "cpu"
    assert provenance["inputs"]["decode/decode_test_s_implicit"]
    model = tmp / "exp" / "c2ser" / "distill" / "model"
    facts = (model / "training.yaml").read_text()
    assert "c2ser_explicit" in facts and "c2ser_implicit" in facts and "transcript_in_prompt: false" in facts
    assert "e2v.path" in (model / "model.yaml").read_text()  # the digest of the encoder it was trained with


def test_the_trained_model_runs_on_files_with_emoreason_infer(model_recipe, tmp_path):
    """README "Your own audio": the installed console script on a wav, a flac and a folder of test utterances."""
    import soundfile as sf
    tmp, _ = model_recipe
    test = DataDir.load(tmp / "data" / "test_s")
    utts = test.utts[:8]
    (tmp_path / "folder").mkdir()
    shutil.copy(test["wav.scp"][utts[0]], tmp_path / "a.wav")
    wav, sr = sf.read(test["wav.scp"][utts[1]])
    sf.write(tmp_path / "b.flac", wav, sr)
    for utt in utts[2:]:
        shutil.copy(test["wav.scp"][utt], tmp_path / "folder" / f"{utt}.wav")
    script = Path(sys.executable).parent / "emoreason-infer"
    model = tmp / "exp" / "c2ser" / "distill" / "model"
    out = subprocess.run([str(script), "--model", str(model), "--quiet", str(tmp_path / "a.wav"),
                          str(tmp_path / "b.flac"), str(tmp_path / "folder")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(r["input"]).name for r in records] == ["a.wav", "b.flac"] + sorted(f"{u}.wav" for u in utts[2:])
    for r in records:
        assert r["label"] in EMOTIONS and abs(sum(r["dist"].values()) - 1) < 1e-4 and r["text"], r
    gold = [test["utt2emo"][u] for u in utts[:2]] + [test["utt2emo"][u] for u in sorted(utts[2:])]
    print(f"emoreason-infer: {sum(r['label'] == g for r, g in zip(records, gold))} of {len(gold)} labels right")


def test_a_second_run_skips_every_stage_in_seconds(model_recipe):
    tmp, _ = model_recipe
    start = time.time()
    again = run_model_stages(tmp, "--stage", "4")
    elapsed = time.time() - start
    lines = stage_lines(again)
    assert lines and set(lines.values()) == {"skipped"}, lines
    assert len(lines) == 7 and elapsed < 60, (len(lines), elapsed)  # stages 4-10, about half a second each


def test_a_live_model_override_at_decode_time_is_refused(model_recipe):
    tmp, _ = model_recipe
    out = decode_command(tmp, "model.feature_norm=global")
    assert out.returncode != 0
    assert "refusing to decode: model.feature_norm is global here but speaker in" in out.stderr


def test_editing_the_sft_learning_rate_retrains_stages_6_to_10_from_scratch(model_recipe):
    tmp, _ = model_recipe
    edit(tmp / "recipe" / "conf" / "recipe" / "mini_lime.yaml", "    lr: 2.0e-3\n", "    lr: 1.5e-3\n")
    out = run_model_stages(tmp, "--stage", "4")
    lines = stage_lines(out)
    assert [lines[k] for k in ("4 shards data", "5 pretrain e2vs")] == ["skipped"] * 2
    assert [lines[k] for k in ("6 sft c2ser", "7 distill c2ser", "9 decode c2ser", "10 score c2ser")] == ["ran"] * 4
    assert "config sft.trainer.lr: 0.002 -> 0.0015" in out.stdout
    sft = tmp / "exp" / "c2ser" / "sft"
    assert "not resuming it: training from the start" in (tmp / "exp" / "log" / "6.sft.c2ser.log").read_text()
    assert len(list((sft / "superseded").iterdir())) == 1  # the old run, set aside
    steps = [json.loads(line)["step"] for line in (sft / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] <= 20 and steps == sorted(steps)  # a new run from step 1, not the old one continued


def test_retraining_stage_5_retrains_every_model_of_the_old_encoder_and_an_old_model_refuses_to_decode(
        model_recipe):
    tmp, _ = model_recipe
    old = tmp / "old_model"
    shutil.copytree(tmp / "exp" / "c2ser" / "distill" / "model", old)
    out = run_model_stages(tmp, "--stage", "5", "--stop_stage", "7", "--pretrain_args", "pretrain.trainer.max_steps=50")
    lines = stage_lines(out)
    assert [lines[k] for k in ("5 pretrain e2vs", "6 sft c2ser", "7 distill c2ser")] == ["ran"] * 3
    assert "input model.e2v.path changed" in out.stdout
    refused = decode_command(tmp, f"decode.model_dir={old}", "decode.modes=[implicit]")
    assert refused.returncode != 0 and "was trained with model.e2v.path=" in refused.stderr
    assert "a model never runs with another encoder" in refused.stderr


def test_targets_from_another_teacher_setting_retrain_stage_6(model_recipe):
    tmp, _ = model_recipe
    out = run_model_stages(tmp, "--stage", "3", "--stop_stage", "6", "--targets_args", "teacher.seed=1",
                           "--pretrain_args", "pretrain.trainer.max_steps=50")
    lines = stage_lines(out)
    assert [lines[k] for k in ("3 targets data", "4 shards data", "6 sft c2ser")] == ["ran"] * 3
    assert lines["5 pretrain e2vs"] == "skipped"
    assert "input data/train_s changed" in out.stdout
