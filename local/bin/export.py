"""Export a trained model dir as a self-contained, shareable dir (layout: local/models/export.py).

    python -m local.bin.export egs/mini_lime/exp/c2ser/sft/model /tmp/c2ser_mini_lime
    python -m local.bin.export MODEL_DIR OUT_DIR --force      # replace an existing OUT_DIR

The model card (OUT_DIR/README.md) says what the recipe recorded about the model when MODEL_DIR
sits in a recipe's exp dir (egs/<corpus>/exp/<exp>/...): the corpus, the train and dev sets and
their sizes (from the stage's config.yaml beside the model), the run.sh commands of exp/run_history.sh,
the code version that trained it (the model's provenance.json) and stage 10's results.md.  What is
not there is written as missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from local.models.export import export_model
from local.utils.digest import RECORD, path_digest
from local.utils.provenance import describe_code, read_json


def recipe_of(model_dir: Path) -> tuple[Path, Path] | None:
    """(recipe dir egs/<corpus>, exp dir exp/<exp>) of a model dir inside a recipe's exp tree."""
    path = model_dir.resolve()
    for exp_root in path.parents:
        if exp_root.name == "exp" and exp_root.parent.parent.name == "egs":
            return exp_root.parent, exp_root / path.relative_to(exp_root).parts[0]
    return None


def shown(path: Path) -> str:
    """A recipe path from egs/ on: the card must not carry the exporter's home directory."""
    parts = path.resolve().parts
    return "/".join(parts[parts.index("egs"):]) if "egs" in parts else path.name


def data_section(model_dir: Path, recipe: Path, record: dict | None) -> str:
    config_path = model_dir.parent / "config.yaml"
    if not config_path.is_file():
        return f"- Corpus: {recipe.name}\n- Train and dev sets: missing: no {shown(config_path)} (the stage's config)"
    stage_cfg = OmegaConf.load(config_path)
    corpus = OmegaConf.select(stage_cfg, "corpus.name", default=None) or recipe.name
    data_root = Path(str(stage_cfg.get("data_root", "data")))
    data_root = data_root if data_root.is_absolute() else recipe / data_root
    recorded = (record or {}).get("inputs") or {}
    lines = [f"- Corpus: {corpus}"]
    for role in ("train_set", "dev_set"):
        name = stage_cfg.get(role)
        if not name:
            lines.append(f"- {role}: missing: {shown(config_path)} names none")
            continue
        wav_scp = data_root / str(name) / "wav.scp"
        if not wav_scp.is_file():
            lines.append(f"- {role} `{name}`: size missing: no {shown(wav_scp)}")
            continue
        n = sum(1 for line in wav_scp.read_text(encoding="utf-8").splitlines() if line.strip())
        then = recorded.get(f"data/{name}")
        same = ("" if then is None else " (as when the model was trained)" if then == path_digest(wav_scp.parent)
                else " (the data dir changed since the model was trained: this is its size now)")
        lines.append(f"- {role} `{name}`: {n} utterances{same}")
    return "\n".join(lines)


def recipe_section(model_dir: Path, recipe: Path, exp_root: Path, record: dict | None) -> str:
    stage = (record or {}).get("stage")
    lines = [f"- Model dir: `{shown(model_dir)}`, written by stage "
             + (f"`{stage}` ({record.get('finished') or record.get('started') or 'time not recorded'})" if stage
                else "missing: no provenance.json")]
    history = exp_root.parent / "run_history.sh"
    commands = [line for line in (history.read_text(encoding="utf-8").splitlines() if history.is_file() else [])
                if line.strip() and not line.startswith("#")]
    if commands:
        lines.append(f"- run.sh commands recorded in `{shown(history)}`: {len(commands)}; the last (which may not "
                     f"be the one that made this model): `cd {shown(recipe)} && ./run.sh "
                     f"{commands[-1].split('run.sh', 1)[-1].strip()}`")
    else:
        lines.append(f"- Recipe command: missing: no {shown(history)}")
    return "\n".join(lines)


def results_section(model_dir: Path, exp_dir: Path) -> str:
    table = exp_dir / "results.md"
    if not table.is_file():
        return f"Missing: no {shown(table)} (stage 10 has not scored this experiment)."
    rows = ((read_json(exp_dir / "results.json") or {}).get("provenance") or {}).get("tables") or {}
    decoded = {str(Path(r["model_dir"]).resolve()) for t in rows.values() for r in (t.get("rows") or {}).values()
               if r.get("model_dir")}
    if not decoded:
        note = "Which model the rows decoded is not recorded."
    elif str(model_dir.resolve()) in decoded:
        note = "The system's rows are this model's decodes."
    else:
        note = "**These rows were decoded from other model dirs, not this one.**"
    return f"From `{shown(table)}`. {note}\n\n" + table.read_text(encoding="utf-8").strip()


def recipe_card(model_dir: Path | str) -> dict[str, str | None]:
    """The model card's sections about the training data, the recipe and the results."""
    model_dir = Path(model_dir)
    record = read_json(model_dir / RECORD)
    trained_by = (f"- Trained by code {describe_code(record.get('code'))}" if isinstance(record, dict)
                  else f"- Training code version: missing: no {RECORD} in the model dir")
    found = recipe_of(model_dir)
    if found is None:
        missing = f"Missing: {model_dir} is not inside a recipe's exp dir (egs/<corpus>/exp/<exp>/...)."
        return {"Training data": missing, "Recipe": f"{missing}\n{trained_by}", "Results": missing}
    recipe, exp_dir = found
    return {"Training data": data_section(model_dir, recipe, record),
            "Recipe": recipe_section(model_dir, recipe, exp_dir, record) + "\n" + trained_by,
            "Results": results_section(model_dir, exp_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a model dir written by save_alm (e.g. exp/c2ser/sft/model)")
    parser.add_argument("out_dir", type=Path, help="where the export goes (must not exist, or be empty)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")
    args = parser.parse_args(argv)
    if not (args.model_dir / "model.yaml").is_file():
        parser.error(f"{args.model_dir}: not a model dir (no model.yaml)")
    try:
        out = export_model(args.model_dir, args.out_dir, card=recipe_card(args.model_dir), force=args.force)
    except FileExistsError as e:
        parser.error(str(e))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
