"""local.bin.folds: the mean ± std over folds of stage 10's tables, as EmoBox reports them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from local.bin.folds import main


def write_fold(path, ua, dropped=None, note=None):
    row = {"ua": ua, "wa": ua / 2, "f1": None, "n": 10, "rejected": 1, "labels": ["anger", "sadness"],
           **({"dropped": dropped} if dropped else {})}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"provenance": {"tables": {"test": {"teacher": {"backend": "offline"}}},
                                               **({"note": note} if note else {})},
                                "tables": {"test": {"implicit": row}},
                                "published": {"test": [{"row": "paper", "source": "p.txt Table 1", "ua": 70.5}]}}))
    return path


def test_mean_and_sample_std_over_folds(tmp_path, capsys):
    uas = [0.5, 0.6, 0.8]
    paths = [write_fold(tmp_path / f"fold{k}" / "sys" / "results.json", ua, {"fear": k}, note="smoke")
             for k, ua in enumerate(uas, 1)]
    assert main(["--out", str(tmp_path / "sys"), *map(str, paths)]) == 0
    result = json.loads((tmp_path / "sys" / "folds.json").read_text())
    entry = result["tables"]["test"]["implicit"]
    assert result["folds"] == ["1", "2", "3"]
    assert entry["ua"]["mean"] == pytest.approx(np.mean(uas)) and entry["ua"]["std"] == pytest.approx(np.std(uas, ddof=1))
    assert entry["wa"]["folds"] == [u / 2 for u in uas] and "f1" not in entry  # a metric no fold has is left out
    assert entry["n"] == 30 and entry["rejected"] == 3 and entry["dropped"] == {"fear": 6}
    md = capsys.readouterr().out
    assert "| implicit | 63.33 ± 15.28 | 31.67 ± 7.64 | 50.0 / 60.0 / 80.0 | 30 | 3 |" in md
    assert "| paper [published] | 70.5 | – |" in md and "**smoke**" in md and "offline teacher" in md
    assert ("- implicit: scored on the labels shared with the model (anger, sadness); not scored, 6 utterances of "
            "the labels it does not have: fear (6).") in md  # the wording of each fold's own table


def test_a_missing_fold_is_an_error_not_a_smaller_mean(tmp_path):
    path = write_fold(tmp_path / "fold1" / "sys" / "results.json", 0.5)
    with pytest.raises(SystemExit, match="1"):
        main(["--out", str(tmp_path / "sys"), str(path), str(tmp_path / "fold2" / "sys" / "results.json")])
    assert not (tmp_path / "sys" / "folds.json").exists()
