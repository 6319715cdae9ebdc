"""emoreason-infer: any audio in, one JSON line per utterance out; bad inputs get their own error line."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from local.bin import infer as infer_cli
from local.data.audio import write_wav
from local.data.segments import Segmenter
from local.eval.infer import infer, list_inputs, load, segment
from local.eval.predictors import load_predictor
from tests.helpers.long_recording import have_espeak, long_recording
from tests.helpers.tiny_model import tiny_model_dir

SR = 16000
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg missing (tools/install.sh installs it)")


def tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"), steps=40)


@pytest.fixture(scope="module")
def predictor(model_dir):
    return load_predictor(model_dir, "cpu", "implicit")


def run_cli(*args: str, stdin: str = "") -> tuple[int, list[dict], str]:
    out = subprocess.run([sys.executable, "-m", "local.bin.infer", *args], input=stdin, capture_output=True,
                         text=True, timeout=300)
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines() if line.strip()], out.stderr


def check_record(record: dict, labels: list[str]) -> None:
    assert "error" not in record, record
    assert record["label"] in labels
    assert set(record["dist"]) == set(labels) and abs(sum(record["dist"].values()) - 1) < 1e-4
    assert isinstance(record["text"], str) and record["text"]
    assert record["seconds"] > 0 and 0 <= record["start"] < record["end"]


@needs_ffmpeg
def test_files_of_every_format_folders_scp_and_stdin(model_dir, predictor, tmp_path):
    write_wav(tmp_path / "a.wav", tone(1.0, 180))
    sf.write(tmp_path / "b.flac", tone(1.5, 240), SR)
    folder = tmp_path / "folder" / "deeper"
    folder.mkdir(parents=True)
    sf.write(folder / "c.ogg", tone(0.8, 300), SR)
    sf.write(folder / "d.mp3", tone(1.2, 200), SR, format="MP3")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(tmp_path / "a.wav"), "-c:a", "aac",
                    str(tmp_path / "folder" / "e.m4a")], check=True)
    (tmp_path / "folder" / "._e.m4a").write_bytes(b"macOS metadata, not audio")
    (tmp_path / "folder" / "notes.txt").write_text("not audio")
    (tmp_path / "wav.scp").write_text(f"utt_x {tmp_path / 'a.wav'}\n")

    code, records, err = run_cli("--model", str(model_dir), "--quiet", str(tmp_path / "a.wav"),
                                 str(tmp_path / "b.flac"), str(tmp_path / "folder"), str(tmp_path / "wav.scp"), "-",
                                 stdin=f"{tmp_path / 'b.flac'}\n")
    assert code == 0, err
    names = [r["input"] for r in records]
    assert names == [str(tmp_path / "a.wav"), str(tmp_path / "b.flac"), str(folder / "c.ogg"),
                     str(folder / "d.mp3"), str(tmp_path / "folder" / "e.m4a"), "utt_x", str(tmp_path / "b.flac")]
    for r in records:
        check_record(r, predictor.labels)
    assert abs(records[0]["end"] - 1.0) < 1e-3 and abs(records[1]["end"] - 1.5) < 1e-3
    # the same audio gives the same answer whatever its container and its name
    assert records[0]["text"] == records[5]["text"]
    assert records[1]["text"] == records[6]["text"]


def test_batching_does_not_change_results(predictor, tmp_path):
    for i, (sec, f) in enumerate([(0.6, 150), (1.9, 220), (1.1, 330), (0.9, 260), (1.4, 180)]):
        write_wav(tmp_path / f"{i}.wav", tone(sec, f, seed=i))
    inputs = list_inputs([str(tmp_path)])
    one = list(infer(predictor, inputs, batch_size=1))
    many = list(infer(predictor, inputs, batch_size=4))
    assert [r["input"] for r in one] == [r["input"] for r in many] == sorted(str(p) for p in tmp_path.glob("*.wav"))
    for a, b in zip(one, many):
        assert a["text"] == b["text"] and a["label"] == b["label"]
        assert max(abs(a["dist"][k] - b["dist"][k]) for k in a["dist"]) < 1e-4


def test_bad_inputs_get_their_own_error_line_and_the_batch_goes_on(model_dir, tmp_path):
    write_wav(tmp_path / "good.wav", tone(1.0, 200))
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + bytes(100))
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    write_wav(tmp_path / "silent.wav", np.zeros(SR, dtype=np.float32))
    write_wav(tmp_path / "long.wav", tone(4.0, 200))
    (tmp_path / "no_audio").mkdir()
    code, records, err = run_cli("--model", str(model_dir), "--quiet", "--max_duration", "3",
                                 *(str(tmp_path / n) for n in ("corrupt.wav", "good.wav", "missing.wav", "empty.wav",
                                                              "silent.wav", "long.wav", "no_audio")))
    assert code == 1
    by_name = {r["input"].rsplit("/", 1)[-1]: r for r in records}
    assert len(records) == 7 and "error" not in by_name["good.wav"]
    expected = {"corrupt.wav": "unreadable audio", "missing.wav": "no such file", "empty.wav": "empty audio",
                "silent.wav": "silent", "long.wav": "over-long", "no_audio": "no audio files"}
    for name, words in expected.items():
        assert words in by_name[name]["error"] and name in by_name[name]["error"], by_name[name]
    assert "6 of 7 inputs failed" in err


def test_a_bad_model_or_option_is_a_usage_error(tmp_path):
    (tmp_path / "m").mkdir()
    code, _, err = run_cli("--model", str(tmp_path / "m"), str(tmp_path))
    assert code == 2 and "not a model this command knows" in err and "emotion2vec" in err


def test_unknown_prompt_names_what_the_model_knows_and_no_prompt_picks_one(model_dir):
    from local.eval.predictors import AudioLLMPredictor
    from local.models.alm import load_alm
    with pytest.raises(ValueError, match="c2ser_explicit, c2ser_implicit"):
        load_predictor(model_dir, "cpu", "cot")
    assert load_predictor(model_dir, "cpu", "explicit").target == "c2ser_explicit"
    assert load_predictor(model_dir, "cpu").target == "c2ser_implicit"  # the direct answer by default
    model = load_alm(model_dir)
    model.facts["targets"] = {"ambiguity_cot": model.facts["targets"]["c2ser_explicit"]}
    assert AudioLLMPredictor(model, "m", None, torch.device("cpu")).target == "ambiguity_cot"  # its only one


def test_split_policies_and_given_segments(predictor, tmp_path):
    wav = np.concatenate([tone(2.0, 200), np.zeros(SR, np.float32), tone(2.0, 300)])
    seg = Segmenter(method="energy", max_seconds=3.0)
    assert segment("x", wav, seg, "auto", 30.0) == [(0.0, 5.0)]
    spans = segment("x", wav, seg, "always", 30.0)
    assert len(spans) == 2 and abs(spans[0][0]) < 0.3 and abs(spans[1][1] - 5.0) < 0.3
    with pytest.raises(ValueError, match="longer than the model's 3 s"):
        segment("x", wav, seg, "never", 3.0)
    given = {"x": [("x-1", 0.5, 1.5), ("x-2", 3.2, -1)]}
    assert segment("x", wav, seg, "auto", 30.0, given) == [(0.5, 1.5), (3.2, 5.0)]
    with pytest.raises(ValueError, match="not in the --segments file"):
        segment("y", wav, seg, "auto", 30.0, given)


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng missing (tools/install.sh installs it)")
def test_a_long_recording_gives_one_line_per_utterance(model_dir, tmp_path):
    wav, truth = long_recording(60.0, seed=3)
    write_wav(tmp_path / "talk.wav", wav)
    code, records, err = run_cli("--model", str(model_dir), "--quiet", "--max_seconds", "20",
                                 str(tmp_path / "talk.wav"))
    assert code == 0, err
    assert len(records) == len(truth)
    for r, (start, end) in zip(records, truth):
        assert abs(r["start"] - start) <= 0.3 and abs(r["end"] - end) <= 0.3, (r, start, end)
        assert r["text"] and r["label"]


def test_table_format_and_out_file(model_dir, tmp_path):
    write_wav(tmp_path / "a.wav", tone(1.0, 180))
    out = tmp_path / "res.jsonl"
    assert infer_cli.main(["--model", str(model_dir), "--quiet", "--out", str(out), str(tmp_path / "a.wav")]) == 0
    assert json.loads(out.read_text())["input"] == str(tmp_path / "a.wav") and not (tmp_path / "res.jsonl.tmp").exists()
    stdout = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, stdout
    try:
        assert infer_cli.main(["--model", str(model_dir), "--quiet", "--format", "table", str(tmp_path / "a.wav")]) == 0
    finally:
        sys.stdout = sys_stdout
    header, row = stdout.getvalue().splitlines()
    assert header.split()[:4] == ["input", "start-end", "label", "p"] and "0.00-1.00" in row


def test_load_refuses_over_long_input_before_reading_it(tmp_path):
    from local.eval.infer import Input
    write_wav(tmp_path / "a.wav", tone(2.0, 200))
    with pytest.raises(ValueError, match="over-long: 2 s > the 1 s limit"):
        load(Input("a", str(tmp_path / "a.wav")), max_duration=1.0)


# --- the released models behind the same command ---------------------------------------------------

def test_emotion2vec_plus_release_is_a_classifier_equal_to_funasr(tmp_path):
    from tests.helpers.reference import import_funasr_emotion2vec, require
    from tests.unit.test_emotion2vec import PLUS_TOKENS, build_reference, reference_extract, tiny_conf, write_release
    cls = require("funasr", import_funasr_emotion2vec)
    conf = tiny_conf()
    ref = build_reference(cls, conf, vocab_size=len(PLUS_TOKENS))
    release = write_release(tmp_path / "emotion2vec_plus_tiny", conf, ref.state_dict(), PLUS_TOKENS)
    predictor = load_predictor(release, "cpu")
    assert predictor.kind == "emotion2vec" and predictor.labels[:4] == ["angry", "disgusted", "fearful", "happy"]
    write_wav(tmp_path / "a.wav", tone(1.3, 220))
    (record,) = infer(predictor, list_inputs([str(tmp_path / "a.wav")]))
    wav = load(list_inputs([str(tmp_path / "a.wav")])[0])
    _, utterance = reference_extract(ref, torch.from_numpy(wav))
    with torch.no_grad():
        expected = torch.softmax(ref.proj(utterance[None]), -1)[0].tolist()
    assert max(abs(record["dist"][k] - p) for k, p in zip(predictor.labels, expected)) < 1e-5
    assert record["label"] == predictor.labels[int(np.argmax(expected))] and record["text"] is None


def test_c2ser_release_runs_through_the_same_command(tmp_path):
    from tests.helpers.c2ser_official import build_release
    from tests.helpers.reference import import_funasr_emotion2vec, require
    from tests.unit.test_emotion2vec import build_reference, tiny_conf, write_release
    from local.models.c2ser_release import LABELS
    root = tmp_path / "C2SER"
    root.mkdir()
    _, _, _, sd = build_release(root)
    width = sd["speech_transformer.embed.out.0.weight"].shape[1]
    conf = tiny_conf(embed_dim=width - 8)  # Emotion2Vec-S features narrower than the encoder, zero-padded as released
    e2v = write_release(root / "Emotion2Vec-S", conf, build_reference(require("funasr", import_funasr_emotion2vec),
                                                                      conf).state_dict())
    (e2v / "model.pt").rename(e2v / "checkpoint.pt")
    predictor = load_predictor(root, "cpu", "implicit")
    assert predictor.kind == "c2ser_release" and predictor.labels == list(LABELS)
    write_wav(tmp_path / "a.wav", tone(1.1, 200))
    (record,) = infer(predictor, list_inputs([str(tmp_path / "a.wav")]))
    assert "error" not in record and isinstance(record["text"], str)
    assert record["label"] in LABELS and abs(sum(record["dist"].values()) - 1) < 1e-5


def test_an_export_answers_as_the_model_dir_it_came_from(model_dir, predictor, tmp_path):
    from local.models.export import export_model
    out = export_model(model_dir, tmp_path / "export")
    exported = load_predictor(out, "cpu", "implicit")
    assert exported.kind == "exported"
    write_wav(tmp_path / "a.wav", tone(1.2, 210))
    inputs = list_inputs([str(tmp_path / "a.wav")])
    (a,), (b,) = list(infer(predictor, inputs)), list(infer(exported, inputs))
    assert a["text"] == b["text"] and a["label"] == b["label"]
    assert max(abs(a["dist"][k] - b["dist"][k]) for k in a["dist"]) < 1e-6


def test_the_distribution_is_read_where_the_text_names_its_label(predictor, tmp_path):
    from local.models.readout import Readout
    readout, where, context = predictor.slot("Slow and low,  so the emotion was inferred to be sadness. Not anger.")
    assert (readout.answer_prefix, readout.separator, where) == ("inferred to be", " ", "label")
    assert context == "Slow and low,  so the emotion was inferred to be "
    assert predictor.slot("It sounds calm to me.") is None  # no label named: the trained read-out
    wavs = [tone(1.0, 150), tone(1.4, 330, seed=2)]
    records = predictor.predict(wavs)
    wav = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in wavs], batch_first=True)
    batch = {"wav": wav, "wav_lens": torch.tensor([len(w) for w in wavs])}
    for i, r in enumerate(records):
        sub = {"wav": batch["wav"][[i]], "wav_lens": batch["wav_lens"][[i]]}
        slot = predictor.slot(r["text"])
        if slot is None:
            assert r["dist_at"] == "readout"
            expected = predictor.readout.distributions(predictor.model, sub, [predictor.instruction], [r["text"]])[0]
        else:
            assert r["dist_at"] == "label" and isinstance(slot[0], Readout)
            expected = slot[0].distributions(predictor.model, sub, [predictor.instruction], [slot[2]])[0]
        assert max(abs(expected[k] - r["dist"][k]) for k in expected) < 1e-5


def test_a_recipe_model_dir_loads_from_anywhere(tmp_path, monkeypatch):
    """model.yaml names the recipe's own parts relative to the recipe dir (e2v.path: exp/e2vs/model), as
    the stages ran there; `emoreason-infer --model egs/<corpus>/exp/...` from the top of the repository
    must find them."""
    from local.models.alm import save_alm
    from local.models.emotion2vec_s import build_e2v
    from tests.helpers.tiny_model import tiny_model
    recipe = tmp_path / "egs" / "toy"
    build_e2v(None, "tiny", init_seed=3).save_pretrained(recipe / "exp" / "e2vs" / "model")
    monkeypatch.chdir(recipe)
    model = tiny_model(tmp_path / "parts", overrides=["e2v.path=exp/e2vs/model"])
    save_alm(model, recipe / "exp" / "c2ser" / "sft" / "model")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    predictor = load_predictor("../egs/toy/exp/c2ser/sft/model", "cpu")
    assert predictor.model.config.e2v.path == "exp/e2vs/model"
    assert predictor.describe().startswith("recipe model ../egs/toy/exp/c2ser/sft/model")
    assert (tmp_path / "elsewhere").samefile(".")  # the loader went back where it was
