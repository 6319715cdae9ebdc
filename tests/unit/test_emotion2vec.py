"""Emotion2Vec-S against the public reference (FunASR's emotion2vec), loading, padding, features."""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from helpers.reference import import_funasr_emotion2vec, require
from local.data.audio import read_audio, write_wav
from local.data.kaldi import read_table
from local.models.e2v_features import Emotion2VecFeature, extract_features, model_fingerprint, write_features
from local.models.emotion2vec_s import (
    OFFICIAL_CONV_SPEC, PLUS_LABELS, Emotion2VecConfig, Emotion2VecS, load_emotion2vec, parse_conv_spec)

TOLERANCE = 1e-4

#: emotion2vec_base's model_conf (FunASR config.yaml), pre-training keys included.
BASE_CONF = {
    "loss_beta": 0.0, "loss_scale": None, "depth": 8, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0,
    "num_heads": 12, "norm_eps": 1e-05, "norm_affine": True, "encoder_dropout": 0.1, "post_mlp_drop": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.05,
    "embed_dim": 768, "mlp_ratio": 4.0, "layer_norm_first": False, "average_top_k_layers": 8,
    "end_of_block_targets": False, "clone_batch": 8, "layer_norm_target_layer": False,
    "batch_norm_target_layer": False, "instance_norm_target_layer": True, "instance_norm_targets": False,
    "layer_norm_targets": False, "ema_decay": 0.999, "ema_same_dtype": True, "log_norms": True,
    "ema_end_decay": 0.99999, "ema_anneal_end_step": 20000, "ema_encoder_only": False, "max_update": 100000,
    "extractor_mode": "layer_norm", "shared_decoder": None, "min_target_var": 0.1, "min_pred_var": 0.01,
    "supported_modality": "AUDIO", "mae_init": False, "seed": 1, "skip_ema": False, "cls_loss": 1.0,
    "recon_loss": 0.0, "d2v_loss": 1.0, "decoder_group": False, "normalize": True,
    "modalities": {"audio": {
        "type": "AUDIO", "prenet_depth": 4, "prenet_layerdrop": 0.05, "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": 10,
        "init_extra_token_zero": True, "mask_noise_std": 0.01, "mask_prob_min": None, "inverse_mask": False,
        "mask_prob": 0.5, "mask_prob_adjust": 0.05, "keep_masked_pct": 0.0, "mask_length": 5, "add_masks": False,
        "remove_masks": False, "mask_dropout": 0.0, "encoder_zero_mask": True, "mask_channel_prob": 0.0,
        "mask_channel_length": 64, "ema_local_encoder": False, "local_grad_mult": 1.0, "use_alibi_encoder": True,
        "alibi_scale": 1.0, "learned_alibi": False, "alibi_max_pos": None, "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True, "learned_alibi_scale_per_layer": False, "num_alibi_heads": 12,
        "model_depth": 8,
        "decoder": {"decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 7, "decoder_layers": 4,
                    "input_dropout": 0.1, "add_positions_masked": False, "add_positions_all": False,
                    "decoder_residual": True, "projection_layers": 1, "projection_ratio": 2.0},
        "extractor_mode": "layer_norm",
        "feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        "conv_pos_width": 95, "conv_pos_groups": 16, "conv_pos_depth": 5, "conv_pos_pre_ln": False}},
}

#: FunASR's token list of the plus models (config.yaml tokenizer_conf).
PLUS_TOKENS = ["生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral",
               "其他/other", "难过/sad", "吃惊/surprised", "<unk>"]


def tiny_conf(**top) -> dict:
    """A small official model_conf; ``audio_*`` keys go to modalities.audio."""
    conf = json.loads(json.dumps(BASE_CONF))
    audio = conf["modalities"]["audio"]
    conf.update(embed_dim=64, depth=2, num_heads=2)
    audio.update(prenet_depth=1, num_alibi_heads=2, model_depth=2, conv_pos_width=38, conv_pos_depth=2,
                 conv_pos_groups=4,
                 feature_encoder_spec="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]")
    audio["decoder"].update(decoder_dim=32, decoder_groups=4, decoder_layers=2)
    for key, value in top.items():
        if key.startswith("audio_"):
            audio[key[len("audio_"):]] = value
        else:
            conf[key] = value
    return conf


@pytest.fixture(scope="module")
def funasr_emotion2vec():
    """FunASR's ``Emotion2vec`` class (helpers/reference.py: imported without running ``funasr/__init__.py``).
    A missing funasr, or librosa that its emotion2vec modules import, fails the tests, never skips them."""
    return require("funasr", import_funasr_emotion2vec)


def build_reference(cls, conf: dict, vocab_size: int = -1, seed: int = 0):
    """A reference model with every tensor perturbed, so LayerNorm affines, the extra tokens and
    the ALiBi scales (one head negative, to exercise the clamp) all matter."""
    torch.manual_seed(seed)
    ref = cls(model_conf=conf, vocab_size=vocab_size).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name.endswith("alibi_scale") else 0.1))
        ref.modality_encoders["AUDIO"].alibi_scale.view(-1)[0] = -0.3
    return ref


def write_release(directory: Path, conf: dict, state: dict, tokens: list[str] | None = None) -> Path:
    """The official release layout: model.pt ({"model": state dict}) and FunASR's config.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, directory / "model.pt")
    doc = {"model": "Emotion2vec", "model_conf": conf}
    if tokens:
        doc["tokenizer"] = "CharTokenizer"
        doc["tokenizer_conf"] = {"unk_symbol": "<unk>", "token_list": tokens}
    (directory / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return directory


def reference_extract(ref, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What FunASR's ``Emotion2vec.inference`` computes for one waveform: frames and their mean."""
    source = wav
    if ref.cfg.normalize:
        source = torch.nn.functional.layer_norm(source, source.shape)
    with torch.no_grad():
        frames = ref.extract_features(source.view(1, -1), padding_mask=None)["x"][0]
    return frames, frames.mean(0)


def padded(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
            torch.tensor([len(w) for w in wavs]))


def random_wavs(lengths, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(n, generator=g) + 0.05 for n in lengths]


@pytest.mark.parametrize("variant", [
    {},
    {"layer_norm_first": True},
    {"audio_learned_alibi_scale_per_layer": True, "audio_conv_pos_pre_ln": True, "normalize": False},
], ids=["post_ln", "pre_ln", "per_layer_alibi_pos_pre_ln"])
def test_tiny_matches_funasr_in_a_padded_batch(funasr_emotion2vec, tmp_path, variant):
    conf = tiny_conf(**variant)
    ref = build_reference(funasr_emotion2vec, conf)
    model, report = load_emotion2vec(write_release(tmp_path / "release", conf, ref.state_dict()))
    assert report.missing == [] and report.unexpected == []
    wavs = random_wavs([16000, 11111, 4000])
    with torch.no_grad():
        out = model.eval().extract(*padded(wavs))
    for i, wav in enumerate(wavs):
        frames, utterance = reference_extract(ref, wav)
        n = int(out["frame_lengths"][i])
        assert n == frames.shape[0]
        assert torch.allclose(out["frames"][i, :n], frames, atol=TOLERANCE, rtol=0)
        assert torch.allclose(out["utterance"][i], utterance, atol=TOLERANCE, rtol=0)
        assert not out["frames"][i, n:].any()


def test_base_matches_funasr_and_every_key_loads(funasr_emotion2vec, tmp_path):
    ref = build_reference(funasr_emotion2vec, BASE_CONF)
    state = ref.state_dict()
    model, report = load_emotion2vec(write_release(tmp_path / "emotion2vec_base", BASE_CONF, state))
    assert model.config == Emotion2VecConfig.preset("base")
    assert report.missing == [] and report.unexpected == []
    decoder = sorted(k for k in state if k.startswith("modality_encoders.AUDIO.decoder."))
    assert decoder and sorted(report.ignored) == decoder
    assert sorted(report.loaded) == sorted(set(state) - set(decoder))
    assert set(report.pretraining_state) == set(decoder)
    wav = random_wavs([24000])[0]
    frames, utterance = reference_extract(ref, wav)
    with torch.no_grad():
        out = model.eval().extract(wav[None])
    assert out["frames"].shape == (1, 74, 768) and frames.shape == (74, 768)
    assert torch.allclose(out["frames"][0], frames, atol=TOLERANCE, rtol=0)
    assert torch.allclose(out["utterance"][0], utterance, atol=TOLERANCE, rtol=0)


def test_plus_head_matches_funasr(funasr_emotion2vec, tmp_path):
    conf = tiny_conf()
    ref = build_reference(funasr_emotion2vec, conf, vocab_size=len(PLUS_TOKENS))
    model, report = load_emotion2vec(write_release(tmp_path / "plus", conf, ref.state_dict(), PLUS_TOKENS))
    assert model.config.labels == PLUS_LABELS
    assert report.missing == [] and report.unexpected == [] and report.ignored
    wav = random_wavs([20000], seed=3)[0]
    _, utterance = reference_extract(ref, wav)
    with torch.no_grad():
        expected = torch.softmax(ref.proj(utterance[None]), -1)[0]
        out = model.eval().extract(wav[None])
    assert torch.allclose(out["probs"][0], expected, atol=TOLERANCE, rtol=0)
    assert out["logits"].shape == (1, 9)


def test_head_and_its_labels_follow_the_checkpoint(funasr_emotion2vec, tmp_path):
    conf = tiny_conf()
    ref = build_reference(funasr_emotion2vec, conf, vocab_size=9)
    model, _ = load_emotion2vec(write_release(tmp_path / "plus", conf, ref.state_dict()))
    assert model.config.labels == PLUS_LABELS
    base_like = build_reference(funasr_emotion2vec, conf)
    model, report = load_emotion2vec(write_release(tmp_path / "base", conf, base_like.state_dict(), PLUS_TOKENS))
    assert model.head is None and "no proj head" in " ".join(report.notes)


def test_masked_encode_matches_funasr_student_path(funasr_emotion2vec, tmp_path):
    """The pre-training path: masked frames zeroed before the positional convs, then removed;
    extra tokens kept; per-block FFN outputs returned as data2vec targets."""
    conf = tiny_conf()
    ref = build_reference(funasr_emotion2vec, conf)
    model, _ = load_emotion2vec(write_release(tmp_path / "release", conf, ref.state_dict()))
    model.eval()
    wav = torch.stack(random_wavs([16000, 16000], seed=5))
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    for row in range(2):
        mask[row, torch.randperm(49, generator=g)[:20]] = True
    with torch.no_grad():
        theirs = ref(wav, mask=True, features_only=True, force_remove_masked=True, precomputed_mask=mask,
                     remove_extra_tokens=False)
        x, lengths = model.local_features(wav)
        ours = model.encode(x, lengths, mask=mask)
    assert ours.kept.shape == (2, 29) and not mask.gather(1, ours.kept).any()
    order = theirs["mask"].ids_keep[..., 0].argsort(1)  # the reference keeps frames in argsort order

    def in_time_order(t):
        return torch.cat([t[:, :10], t[:, 10:].gather(1, order[..., None].expand(-1, -1, t.shape[-1]))], 1)

    assert torch.allclose(ours.x, in_time_order(theirs["x"]), atol=TOLERANCE, rtol=0)
    assert len(ours.layer_results) == len(theirs["layer_results"]) == 2
    for mine, ref_target in zip(ours.layer_results, theirs["layer_results"]):
        assert torch.allclose(mine, in_time_order(ref_target), atol=TOLERANCE, rtol=0)


def test_padded_batch_equals_one_at_a_time():
    torch.manual_seed(0)
    model = Emotion2VecS(Emotion2VecConfig.preset("tiny")).eval()
    wavs = random_wavs([8000, 23456, 401, 16000], seed=2)
    with torch.no_grad():
        batch = model.extract(*padded(wavs))
        for i, wav in enumerate(wavs):
            alone = model.extract(wav[None])
            n = int(batch["frame_lengths"][i])
            assert n == alone["frames"].shape[1]
            assert (batch["frames"][i, :n] - alone["frames"][0]).abs().max() < 1e-5
            assert (batch["utterance"][i] - alone["utterance"][0]).abs().max() < 1e-5


def test_too_short_input_is_rejected_with_its_row():
    model = Emotion2VecS(Emotion2VecConfig.preset("tiny")).eval()
    wav, lengths = padded(random_wavs([4000, 399]))
    with pytest.raises(ValueError, match=r"rows \[1\].*400 samples"):
        model.extract(wav, lengths)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    config = Emotion2VecConfig.preset("tiny")
    model = Emotion2VecS(dataclasses.replace(config, labels=("anger", "joy"))).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "emotion2vec_s"
    loaded = Emotion2VecS.from_pretrained(tmp_path / "m").eval()
    same, report = load_emotion2vec(tmp_path / "m")
    assert loaded.config == model.config == same.config
    assert report.loaded == sorted(model.state_dict())
    wav = random_wavs([12000])[0][None]
    with torch.no_grad():
        a, b = model.extract(wav), loaded.extract(wav)
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["probs"], b["probs"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, same.state_dict()[key]), key


def test_load_report_names_missing_unexpected_and_ignored_keys(funasr_emotion2vec, tmp_path):
    conf = tiny_conf()
    state = build_reference(funasr_emotion2vec, conf).state_dict()
    wrapped = {f"module.{k}": v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    wrapped["module.modality_encoders.AUDIO.mystery.weight"] = torch.zeros(3)
    wrapped["module._ema"] = torch.zeros(5)
    directory = tmp_path / "release"
    write_release(directory, conf, {})
    torch.save({"state_dict": wrapped, "epoch": 3}, directory / "model.pt")
    model, report = load_emotion2vec(directory)
    assert report.missing == ["blocks.1.mlp.fc2.bias"]
    assert report.unexpected == ["modality_encoders.AUDIO.mystery.weight"]
    assert "_ema" in report.ignored
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias[\s\S]*mystery"):
        load_emotion2vec(directory, strict=True)


def test_bare_pt_needs_a_size_and_the_size_must_fit(funasr_emotion2vec, tmp_path):
    conf = tiny_conf(normalize=True)
    state = build_reference(funasr_emotion2vec, conf).state_dict()
    torch.save({"model_state_dict": state}, tmp_path / "e2v.pt")
    with pytest.raises(FileNotFoundError, match="pass size="):
        load_emotion2vec(tmp_path / "e2v.pt")
    model, report = load_emotion2vec(tmp_path / "e2v.pt", size="tiny")
    assert report.missing == [] and report.unexpected == []
    with pytest.raises(ValueError, match=r"project_features\.2\.weight: checkpoint \(64, 32\) vs model \(768, 512\)"):
        load_emotion2vec(tmp_path / "e2v.pt", size="base")


def test_fairseq_style_checkpoint_with_a_pickled_cfg_loads_with_a_warning(funasr_emotion2vec, tmp_path, caplog):
    conf = tiny_conf()
    state = build_reference(funasr_emotion2vec, conf).state_dict()
    directory = write_release(tmp_path / "release", conf, {})
    torch.save({"cfg": OmegaConf.create({"model": conf}), "model": state}, directory / "model.pt")
    model, report = load_emotion2vec(directory)
    assert report.missing == [] and report.unexpected == []
    assert "weights_only=False" in caplog.text


def test_official_yaml_and_conv_spec():
    assert parse_conv_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == OFFICIAL_CONV_SPEC
    with pytest.raises(ValueError, match="unsupported"):
        parse_conv_spec("__import__('os').system('true')")
    assert Emotion2VecConfig.preset("base").receptive_field == 400
    with pytest.raises(ValueError, match="even"):
        Emotion2VecConfig(conv_pos_width=96, conv_pos_depth=6)


def test_official_yaml_reads_sizes_and_labels(tmp_path):
    conf = tiny_conf(audio_start_drop_path_rate=0.2, start_drop_path_rate=0.1)
    write_release(tmp_path, conf, {}, PLUS_TOKENS)
    config = Emotion2VecConfig.from_official_yaml(tmp_path / "config.yaml")
    assert (config.embed_dim, config.depth, config.num_heads, config.prenet_depth) == (64, 2, 2, 1)
    assert config.feature_encoder_spec == ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2
    assert config.labels == PLUS_LABELS
    assert (config.prenet_start_drop_path_rate, config.start_drop_path_rate) == (0.2, 0.1)


# --- feature extraction -------------------------------------------------------

@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    Emotion2VecS(Emotion2VecConfig.preset("tiny")).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_extract_features_batches_by_length_and_skips_bad_audio(data_dir, tiny_dir, tmp_path):
    wav_scp = read_table(data_dir / "wav.scp")
    write_wav(tmp_path / "short.wav", np.zeros(160, dtype=np.float32))
    wav_scp.update({"spk9-short": str(tmp_path / "short.wav"), "spk9-gone": str(tmp_path / "gone.wav")})
    model = Emotion2VecS.from_pretrained(tiny_dir).eval()
    skipped = {}
    results = list(extract_features(model, wav_scp, batch_size=4, on_skip=skipped.__setitem__, progress=False))
    assert sorted(skipped) == ["spk9-gone", "spk9-short"] and "receptive field" in skipped["spk9-short"]
    assert sorted(u for u, _, _ in results) == sorted(set(wav_scp) - set(skipped))
    single = Emotion2VecFeature(str(tiny_dir))
    for utt, frames, utterance in results:
        wav = read_audio(wav_scp[utt], utt)
        assert frames.shape == (int(model.frame_lengths(torch.tensor([len(wav)]))), 64)
        assert np.abs(frames - single(wav)).max() < 1e-5
        assert np.allclose(utterance, frames.mean(0), atol=1e-5)
    copy = pickle.loads(pickle.dumps(single))  # shards with nj > 1 pickle it; the model reloads lazily
    assert copy._model is None and np.abs(copy(wav) - frames).max() < 1e-5


def test_e2v_extract_stage_writes_index_and_resumes(data_dir, tiny_dir, tmp_path):
    from local.bin.e2v_extract import main

    conf_file = Path(__file__).resolve().parents[2] / "conf" / "stage" / "e2v_extract.yaml"
    cfg = OmegaConf.create({"data_root": str(data_dir.parent), "dump_root": str(tmp_path / "dump"),
                            "train_set": data_dir.name, "dev_set": "dev", "test_sets": [], "device": "cpu",
                            "e2v_extract": OmegaConf.load(conf_file)})
    cfg.e2v_extract.model = str(tiny_dir)
    cfg.e2v_extract.sets = [data_dir.name]
    main(cfg)
    out = tmp_path / "dump" / "e2v" / data_dir.name
    utts = sorted(read_table(data_dir / "wav.scp"))
    frames_scp, utt_scp = read_table(out / "frames.scp"), read_table(out / "utterance.scp")
    assert sorted(frames_scp) == sorted(utt_scp) == utts
    info = json.loads((out / "info.json").read_text())
    assert info["complete"] and info["num_utts"] == len(utts) and info["dim"] == 64
    first = np.load(out / utt_scp[utts[0]])
    assert first.shape == (64,) and np.allclose(first, np.load(out / frames_scp[utts[0]]).mean(0), atol=1e-5)

    (out / "utterance" / f"{utts[1]}.npy").unlink()
    stamp = (out / "frames" / f"{utts[0]}.npy").stat().st_mtime_ns
    model = Emotion2VecS.from_pretrained(tiny_dir)
    info = write_features(model, read_table(data_dir / "wav.scp"), out, model_fingerprint(tiny_dir), progress=False)
    assert info["num_utts"] == len(utts) and (out / "utterance" / f"{utts[1]}.npy").is_file()
    assert (out / "frames" / f"{utts[0]}.npy").stat().st_mtime_ns == stamp  # reused, not recomputed
