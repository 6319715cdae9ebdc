"""``run.sh --ngpu 0 --nproc 2``: the distributed launch path on any machine (torchrun, gloo, two CPU processes).

A user scales a recipe out by changing ``--ngpu`` / ``--nproc`` and nothing else, and expects the same
experiment: stage 6 under torchrun must train on the batches one process trains on (each rank its rows of
every global batch) with the loss of one process, and stage 9 split into jobs must write the hypotheses of one
job.  On the fake CREMA-D at smoke size (tiny random models), so that it takes about two minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import fake_crema_d

ROOT = Path(__file__).resolve().parents[2]
# dropout draws other masks for the same rows in another process: off, so that 1 and 2 processes compare
NO_DROPOUT = "model.connector.semantic.dropout=0"
SFT = f"{NO_DROPOUT} sft.trainer.max_epochs=2 sft.trainer.max_steps=8 sft.trainer.log_every=1"


def run(tmp: Path, exp: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CREMA_D=str(tmp / "db" / "CREMA-D"))
    out = subprocess.run([str(ROOT / "egs" / "crema_d" / "run.sh"), "--nj", "1", "--recipe", "smoke",
                          "--baselines", "", "--data_root", str(tmp / "data"), "--dump_root", str(tmp / "dump"),
                          "--exp_root", str(tmp / exp), *args], env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def train_losses(exp_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and r.get("split", "train") == "train"]


def valid_loss(exp_dir: Path) -> float:
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    (loss,) = [r["valid_loss"] for r in rows if "valid_loss" in r]
    return loss


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    fake_crema_d.build(tmp / "db", fake_crema_d.every_actor(), seconds=0.6)
    run(tmp, "one", "--stop_stage", "5")
    shutil.copytree(tmp / "one", tmp / "two")  # the same Emotion2Vec-S for both
    return tmp


def test_two_torchrun_processes_train_as_one_process_on_the_same_global_batch(recipe):
    one = run(recipe, "one", "--stage", "6", "--stop_stage", "6", "--sft_args", SFT)
    two = run(recipe, "two", "--ngpu", "0", "--nproc", "2", "--stage", "6", "--stop_stage", "6", "--sft_args", SFT)
    log = (recipe / "two" / "log" / "6.sft.c2ser.log").read_text()
    assert "tools/torchrun.sh 2 1 -m local.bin.sft" in log.splitlines()[0]  # the command the log starts with
    assert "world size 2" in log and "world size 1" in (recipe / "one" / "log" / "6.sft.c2ser.log").read_text()
    want, got = train_losses(recipe / "one" / "c2ser" / "sft"), train_losses(recipe / "two" / "c2ser" / "sft")
    assert [s for s, _ in want] == [s for s, _ in got] == list(range(1, 9))
    # float sums in another order: ~1e-7 apart; the mean of the two halves' own token means is ~4e-4 off
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-6)
    assert valid_loss(recipe / "two" / "c2ser" / "sft") == pytest.approx(valid_loss(recipe / "one" / "c2ser" / "sft"),
                                                                           rel=1e-6)
    assert len({round(loss, 3) for _, loss in want}) > 4  # a run that learns: the comparison is not of constants
    assert "Stage 6 (sft, c2ser): up to date" in run(recipe, "two", "--nproc", "1", "--stage", "6", "--stop_stage",
                                                     "6", "--sft_args", SFT).stdout  # how it ran is not what it made
    assert "Stage 6 (sft, c2ser): up to date" not in one.stdout + two.stdout


def test_decoding_split_into_two_jobs_writes_the_hypotheses_of_one_job(recipe):
    args = ["--stage", "6", "--stop_stage", "9", "--sft_args", SFT, "--distill_args", NO_DROPOUT,
            "--decode_args", NO_DROPOUT]
    run(recipe, "one", *args)
    decode = recipe / "one" / "c2ser" / "decode_test_implicit"
    one_job = {p.name: (decode.parent / p.name / "hyps.jsonl").read_bytes()
               for p in decode.parent.glob("decode_*")}
    timing = json.loads((decode / "timing.json").read_text())
    out = run(recipe, "one", "--nproc", "2", "--force", "true", "--stage", "9", "--stop_stage", "9", *args[4:])
    logs = sorted(p.name for p in (recipe / "one" / "log").glob("9.decode.c2ser*.log"))
    assert logs == ["9.decode.c2ser.1.log", "9.decode.c2ser.2.log", "9.decode.c2ser.log"], logs
    two_jobs = {name: (decode.parent / name / "hyps.jsonl").read_bytes() for name in one_job}
    assert set(one_job) == {"decode_test_explicit", "decode_test_implicit"}
    assert two_jobs == one_job
    merged = json.loads((decode / "timing.json").read_text())
    assert merged["jobs"] == 2 and merged["n"] == timing["n"] == 20 and not list(decode.glob("split*"))
    assert "merged the parts of 2 jobs" in out.stdout + out.stderr
