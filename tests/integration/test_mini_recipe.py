"""The mini_lime recipe end to end through the built stages, as a user runs it.

This is the slow test (a few minutes on 2 cores): it synthesises the whole corpus.
Outputs go to a temporary dir, so a developer's own egs/mini_lime/{data,dump,exp} stay untouched.
"""
import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from local.data.kaldi import DataDir, parse_dist, parse_kv, validate_data_dir
from local.data.labels import EMOTIONS

ROOT = Path(__file__).resolve().parents[2]
TARGET_TYPES = {"c2ser_explicit", "c2ser_implicit", "eips", "direct_response", "ambiguity_cot",
                "summarize", "elaborate"}


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
        assert f"Stage {n} ({name}): done already" in second.stdout
    assert "run_history.sh" in os.listdir(tmp / "exp")
