"""Every stage of a real-corpus recipe on a CPU (``--recipe smoke``): IEMOCAP's five folds with mean ± std, a
model of IEMOCAP's 4 classes tested on MELD's 7 (cross-corpus), on fake copies of both corpora, and what a
re-run with fewer jobs or one more test set (a user's own dir) does and does not touch.

The smoke's numbers mean nothing (tiny models, a few steps); what is checked is that every stage runs on each
fold's own sets, that stage 10's fold table averages exactly the folds' tables, and that a test set of another
corpus is scored on the labels it shares with the model, naming the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_meld
from helpers.fake_iemocap import build, five_sessions

from local.data.kaldi import DataDir

ROOT = Path(__file__).resolve().parents[2]


def run(recipe: str, tmp: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([str(ROOT / "egs" / recipe / "run.sh"), "--nj", "1", "--data_root", str(tmp / "data"),
                          "--dump_root", str(tmp / "dump"), "--exp_root", str(tmp / "exp"), *args],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


@pytest.fixture
def iemocap(tmp_path):
    return dict(os.environ, IEMOCAP=str(build(tmp_path / "db", five_sessions())))


def test_the_smoke_runs_every_stage_of_all_five_iemocap_folds_and_reports_mean_and_std(iemocap, tmp_path):
    out = run("iemocap", tmp_path, "--recipe", "smoke", "--baselines", "", "--folds", "all", env=iemocap)
    assert "### test: mean ± std over folds 1, 2, 3, 4, 5" in out.stdout
    assert "CPU smoke (--recipe smoke)" in out.stdout  # its numbers say what they are
    tables = []
    for k in range(1, 6):
        test = DataDir.load(tmp_path / "data" / f"fold{k}" / "test")
        assert {spk[:5] for spk in test["utt2spk"].values()} == {f"Ses0{k}"}  # leave session k out
        tables.append(json.loads((tmp_path / "exp" / f"fold{k}" / "c2ser" / "results.json").read_text())["tables"])
    folds = json.loads((tmp_path / "exp" / "c2ser" / "folds.json").read_text())
    assert folds["folds"] == ["1", "2", "3", "4", "5"] and not folds["missing"]
    for row in ("explicit", "implicit", "attributes"):
        ua = [t["test"][row]["ua"] for t in tables]
        entry = folds["tables"]["test"][row]
        assert entry["ua"]["folds"] == ua
        assert entry["ua"]["mean"] == pytest.approx(np.mean(ua)) and entry["ua"]["std"] == pytest.approx(np.std(ua, ddof=1))
        assert entry["n"] == sum(t["test"][row]["n"] for t in tables)


def test_a_model_of_iemocap_is_scored_on_meld_on_the_labels_they_share(iemocap, tmp_path):
    """MELD's test set prepared by IEMOCAP's stage 0 (corpus.extra_test_sets), mapped by its stage 1."""
    env = {**iemocap, "MELD": str(fake_meld.build(tmp_path / "meld_db"))}
    out = run("iemocap", tmp_path, "--recipe", "smoke", "--baselines", "", "--test_sets", "test meld_test",
              "--prepare_args", "+corpus.extra_test_sets.meld_test={preparer:meld,var:MELD,part:test}", env=env)
    gold = DataDir.load(tmp_path / "data" / "meld_test")["utt2emo"]
    outside = {label: sum(v == label for v in gold.values()) for label in set(gold.values())
               if label not in ("anger", "happiness", "neutral", "sadness")}
    assert outside  # the fake MELD has labels IEMOCAP's 4 classes lack, and keeps them in the test set
    results = json.loads((tmp_path / "exp" / "c2ser" / "results.json").read_text())["tables"]
    for row in ("explicit", "implicit", "attributes"):
        entry = results["meld_test"][row]
        assert entry["labels"] == ["anger", "happiness", "neutral", "sadness"]
        assert entry["dropped"] == dict(sorted(outside.items()))
        assert entry["n"] + sum(outside.values()) == len(gold)
    counts = ", ".join(f"{label} ({n})" for label, n in sorted(outside.items()))
    assert (f"- explicit, implicit, attributes: scored on the labels shared with the model (anger, happiness, "
            f"neutral, sadness); not scored, {sum(outside.values())} utterances of the labels it does not have: "
            f"{counts}.") in out.stdout


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_fewer_jobs_or_a_new_test_set_retrain_nothing_and_a_users_dir_is_never_written(iemocap, tmp_path):
    run("iemocap", tmp_path, "--recipe", "smoke", "--baselines", "", env=iemocap)
    models = {name: digests(tmp_path / "exp" / name) for name in ("e2vs/model", "c2ser/sft/model", "c2ser/distill/model")}
    before = json.loads((tmp_path / "exp" / "c2ser" / "results.json").read_text())["tables"]

    out = run("iemocap", tmp_path, "--recipe", "smoke", "--baselines", "", "--nj", "2", env=iemocap)
    assert out.stdout.count("up to date, skipped") == 11  # --nj changes no output

    user = tmp_path / "users" / "test"  # a folder of the user's, named like the recipe's own test set
    user.mkdir(parents=True)
    for table in ("wav.scp", "utt2spk", "text", "utt2emo"):
        shutil.copy(tmp_path / "data" / "test" / table, user / table)
    mine = digests(user.parent)
    clash = subprocess.run([str(ROOT / "egs" / "iemocap" / "run.sh"), "--test_sets", f"test {user}"], env=iemocap,
                           capture_output=True, text=True, timeout=60)
    assert clash.returncode == 1 and f"{user} would be the set 'test', which this recipe already has" in clash.stderr
    out = run("iemocap", tmp_path, "--recipe", "smoke", "--baselines", "", "--test_sets", f"test mine={user}",
              env=iemocap)
    for line in ("Stage 5 (pretrain, e2vs)", "Stage 6 (sft, c2ser)", "Stage 7 (distill, c2ser)", "Stage 8 (rl, c2ser)"):
        assert f"{line}: up to date, skipped" in out.stdout, line
    assert "Stage 9 (decode, c2ser) runs" in out.stdout
    assert {name: digests(tmp_path / "exp" / name) for name in models} == models  # nothing retrained
    assert digests(user.parent) == mine  # the user's dir: not a byte added or changed
    after = json.loads((tmp_path / "exp" / "c2ser" / "results.json").read_text())["tables"]
    timeless = lambda table: {row: {k: v for k, v in entry.items() if k != "sec_per_utt"}  # noqa: E731
                              for row, entry in table.items()}
    assert set(after) == {"test", "mine"} and timeless(after["test"]) == timeless(before["test"])
    assert after["mine"]["implicit"]["n"] == before["test"]["implicit"]["n"]

    # one model decoded and scored alone, as the refusal of decode.model_dir for every experiment says
    system = digests(tmp_path / "exp" / "c2ser")
    run("iemocap", tmp_path, "--recipe", "smoke", "--stage", "9", "--baselines", "", "--test_sets", f"test mine={user}",
        "--decode_args",
        f"decode.model_dir={tmp_path / 'exp' / 'c2ser' / 'sft' / 'model'} exp_name=sft_alone",
        "--score_args", "exp_name=sft_alone", env=iemocap)
    assert digests(tmp_path / "exp" / "c2ser") == system  # no other experiment touched
    alone = json.loads((tmp_path / "exp" / "sft_alone" / "results.json").read_text())
    assert set(alone["tables"]) == {"test", "mine"}
    assert {r["model_dir"] for t in alone["provenance"]["tables"].values() for r in t["rows"].values()
            if "model_dir" in r} == {str(tmp_path / "exp" / "c2ser" / "sft" / "model")}


def test_a_corpus_without_transcripts_runs_every_stage_with_an_asr_model(tmp_path):
    """EmoBox ships no text: stage 1 writes it with an ASR model (a tiny random Whisper here), and stages 2-10 run."""
    from helpers import tiny_whisper
    from test_recipes_stage4 import build_emobox

    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOBOX_")}
    env["EMOBOX"] = str(build_emobox(tmp_path / "db"))
    whisper = tiny_whisper.build(tmp_path / "whisper")
    out = run("emobox", tmp_path, "--recipe", "smoke", "--baselines", "", "--skip_stages", "",
              "--format_args", f"format.asr.model={whisper} format.asr.max_new_tokens=8", env=env)
    for n, name in enumerate(("prepare", "format", "attributes", "targets", "shards", "pretrain", "sft", "distill"), 0):
        assert f"Stage {n} ({name}, " in out.stdout
    assert "no transcripts in the corpus" in (tmp_path / "exp" / "log" / "1.format.data.log").read_text()
    test = DataDir.load(tmp_path / "data" / "test")
    assert set(test["text"]) == set(test.utts) and all(test["text"].values())
    results = json.loads((tmp_path / "exp" / "c2ser" / "results.json").read_text())["tables"]["test"]
    assert results["implicit"]["n"] == len(test)
