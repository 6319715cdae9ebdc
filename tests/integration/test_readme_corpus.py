"""README, "Adding a corpus": its three files, taken from the README as they are, make a recipe that goes from
a folder of labelled wav files (``labels.csv``) to a results table on a CPU.

The recipe must live in ``egs/`` (its run.sh calls ``../../run.sh``), so the test writes ``egs/mycorpus/`` into
the repository and removes it afterwards; it skips when a user already has an ``egs/mycorpus``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.tones import tone

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "egs" / "mycorpus"
LABELS = ("ang", "happy", "neutral", "sad")  # the corpus' own spellings; stage 1 maps them


def readme_files() -> dict[Path, str]:
    """{path: text} of every code block of the README whose first (or second) line is a comment naming a
    file under egs/mycorpus/."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    files = {}
    for block in blocks:
        named = re.search(r"^# (egs/mycorpus/\S+)", "\n".join(block.splitlines()[:2]), re.MULTILINE)
        if named:
            files[ROOT / named.group(1)] = block
    return files


@pytest.fixture
def recipe():
    if RECIPE.exists():
        pytest.skip(f"{RECIPE} exists: this test writes its own there")
    try:
        for path, text in readme_files().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (RECIPE / "run.sh").chmod(0o755)
        yield RECIPE
    finally:
        shutil.rmtree(RECIPE, ignore_errors=True)


def make_corpus(root: Path) -> Path:
    """4 speakers x 8 utterances of 0.8 s tones, every label twice per speaker, and labels.csv."""
    root.mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "speaker", "label", "text"])
        for s in range(1, 5):
            for k in range(8):
                name = f"wav/s{s}_{k:02d}.wav"
                (root / "wav").mkdir(exist_ok=True)
                tone(root / name, 5 * s + k, 0.8)
                writer.writerow([name, f"spk{s}", LABELS[k % 4], f"sentence number {k} of speaker {s}"])
    return root


def test_the_readme_recipe_goes_from_labelled_wavs_to_a_results_table(recipe, tmp_path):
    assert {p.name for p in readme_files()} == {"run.sh", "mycorpus.yaml", "prepare.py"}
    env = dict(os.environ, MYCORPUS=str(make_corpus(tmp_path / "corpus")))
    out = subprocess.run(["./run.sh", "--stop_stage", "4", "--nj", "1"], cwd=recipe, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not any((recipe / "data" / s / "rejected").exists() for s in ("train", "dev", "test"))
    out = subprocess.run(["./run.sh", "--recipe", "smoke", "--baselines", "", "--nj", "1"], cwd=recipe, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "### test" in out.stdout and "CPU smoke" in out.stdout
    table = json.loads((recipe / "exp" / "c2ser" / "results.json").read_text())["tables"]["test"]
    assert {row["n"] for row in table.values()} == {8}  # spk4's 8 utterances, every row
    assert table["implicit"]["labels"] == ["anger", "happiness", "neutral", "sadness"]
