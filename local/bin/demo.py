"""A web page to try a model by ear: record or upload speech, see the emotion, the distribution and the reasoning.

    python -m local.bin.demo --model exp/c2ser/model            # prints the URL it serves
    python -m local.bin.demo --model DIR --host 0.0.0.0 --port 0   # any free port, reachable from other hosts

The page calls exactly what ``emoreason-infer`` calls (:func:`local.eval.infer.infer_file`), so what a listener
sees is what the command line and the scoring stages would say about the same file.  Audio longer than
``--max_seconds`` is cut into utterances; the headline then is the duration-weighted vote of the segments'
labels over their duration-weighted mean distribution, and the table keeps every segment's own answer.  A bad
input (unreadable, silent, no speech) is a message on the page, never a trace: the person at the browser
cannot read the server's log.  Gradio is an optional extra (``pip install -e '.[demo]'``) so the recipes do
not carry a web stack; it is imported only when the page is built.
"""
from __future__ import annotations

import argparse
import html
import logging
import os
import socket
import sys
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("demo")

COLUMNS = ["start (s)", "end (s)", "label", "top p", "text"]
ERROR_STYLE = "color:#b91c1c;border:1px solid #fca5a5;background:#fef2f2;padding:8px 12px;border-radius:6px"


def import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home: demo hosts are often offline
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("local.bin.demo needs gradio: install the demo extra: pip install -e '.[demo]'") from None
    return gr


def overall(records: list[dict]) -> tuple[str | None, dict[str, float] | None, str]:
    """One answer for the whole file: a lone segment as it is; several weighted by their durations, so a
    short cough-length segment cannot outvote a minute of speech."""
    if len(records) == 1:
        r = records[0]
        return r.get("label"), r.get("dist"), r.get("text") or ""
    weight = [max(r["end"] - r["start"], 1e-3) for r in records]
    votes: dict[str, float] = defaultdict(float)
    mean: dict[str, float] = defaultdict(float)
    with_dist = sum(w for r, w in zip(records, weight) if r.get("dist"))
    for r, w in zip(records, weight):
        if r.get("label"):
            votes[r["label"]] += w
        for k, p in (r.get("dist") or {}).items():
            mean[k] += p * w / with_dist
    label = max(votes, key=votes.get) if votes else None
    text = "\n\n".join(f"[{r['start']:.1f}-{r['end']:.1f} s] {(r.get('text') or '').strip()}" for r in records)
    return label, dict(mean) or None, text


def segment_rows(records: list[dict]) -> list[list]:
    return [[round(r["start"], 2), round(r["end"], 2), r.get("label") or "",
             round(max(r["dist"].values()), 3) if r.get("dist") else None, " ".join((r.get("text") or "").split())]
            for r in records]


def build_app(predictor, max_seconds: float = 30.0, infer=None):
    """The Blocks page around ``predictor``; ``infer`` defaults to :func:`local.eval.infer.infer_file`."""
    gr = import_gradio()
    if infer is None:
        from local.eval.infer import infer_file as infer
    empty_table = {"headers": COLUMNS, "data": []}

    def failed(message: str):
        box = f'<div style="{ERROR_STYLE}"><b>Error:</b> {html.escape(message)}</div>'
        return "", None, "", empty_table, box

    def analyse(path: str | None):
        if not path:
            return failed("no audio: upload a file or record from the microphone first")
        name = Path(path).name  # Gradio's cache path means nothing to the person who uploaded the file
        try:
            records = infer(predictor, path, max_seconds=max_seconds)
        except Exception as e:  # a bug still ends as a message; the trace goes to the server's log
            log.exception("inference failed on %s", path)
            return failed(f"{name}: inference failed: {e}")
        errors = [r["error"].replace(path, name) for r in records if "error" in r]
        ok = [r for r in records if "error" not in r]
        if not ok:
            return failed("; ".join(errors) or f"{name}: no speech found")
        label, dist, text = overall(ok)
        notes = [f"{name}: {len(ok)} segment{'s' * (len(ok) > 1)}, "
                 f"{sum(r.get('seconds', 0.0) for r in ok):.2f} s of model time"]
        if len(ok) == 1 and ok[0].get("label_from") == "dist":
            notes.append("label from the distribution, as the text gave none "
                         f"({ok[0].get('text_label') or 'no label'})")
        notes += [f"skipped: {e}" for e in errors]
        return (label or "(no label)", dist, text, {"headers": COLUMNS, "data": segment_rows(ok)},
                "<br>".join(html.escape(n) for n in notes))

    with gr.Blocks(title="EmoReason demo") as app:
        gr.Markdown(f"## EmoReason: speech emotion with reasoning\n{predictor.describe()}\n\n"
                    f"Labels: {', '.join(predictor.labels)}. Audio longer than {max_seconds:g} s is cut into "
                    "utterances, one table row each.")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech",
                                 elem_id="audio")
                button = gr.Button("Recognise emotion", variant="primary", elem_id="run")
                status = gr.HTML(elem_id="status")
            with gr.Column():
                emotion = gr.Textbox(label="Predicted emotion", interactive=False, elem_id="emotion")
                dist = gr.Label(label="Distribution over the model's labels", num_top_classes=len(predictor.labels),
                                show_heading=False, elem_id="dist")
                text = gr.Textbox(label="Reasoning", lines=4, max_lines=12, interactive=False, elem_id="reasoning")
        table = gr.Dataframe(value=empty_table, label="Segments", interactive=False, wrap=True, elem_id="segments",
                             datatype=["number", "number", "str", "number", "str"])
        button.click(analyse, inputs=audio, outputs=[emotion, dist, text, table, status])
    return app


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    from local.bin.infer import add_model_options
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860, help="0: any free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks, one line per request
    gr = import_gradio()  # before the model: a missing extra should not cost a model load to find out
    from local.eval.predictors import load_predictor
    try:
        predictor = load_predictor(args.model, device=args.device, prompt=args.prompt)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = build_app(predictor, args.max_seconds)
    port = args.port or free_port(args.host)
    # System fonts: the default theme fetches Google Fonts, which an offline host cannot reach.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    _, url, _ = app.launch(server_name=args.host, server_port=port, prevent_thread_lock=True, quiet=True,
                           ssr_mode=False, theme=theme, footer_links=[])
    print(f"EmoReason demo ({predictor.describe()}) running on {url}", flush=True)
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
