"""Stage 10: the word error rate of transcripts (AudioLLM-Reasoning's ASR task, Table 7's "ASR WER").

A model's transcript and the reference differ in ways no listener would call
an error: case, punctuation, full-width CJK punctuation.  Both sides are
therefore normalised the same way before alignment (:func:`normalise`):

* Unicode NFKC, so that full-width letters and digits are the ASCII ones;
* lower case (``str.casefold``);
* apostrophes inside a word dropped ("don't" -> "dont"), so that a model
  writing ’ for ' is not wrong twice;
* every other punctuation character (Unicode category P*, which holds
  。，！？、「」《》 as well as ASCII punctuation) and symbol (S*) a space.

Mandarin has no spaces between words, and segmenting it into words would make
the score depend on the segmenter, so every CJK character (ideographs and
kana) is a token of its own, and other text is split at whitespace.  On
Mandarin this is the character error rate, on English the word error rate,
and on code-switched speech the mixed error rate usual for it; the key stays
``wer`` because it is the ASR column of the tables either way.

The rate is corpus-level, as ASR results are reported: the sum of edits
(substitutions + deletions + insertions) over all utterances divided by the
sum of reference tokens, so that a two-word utterance with one error does not
weigh as much as a fifty-word one.  A mean of per-utterance rates would.
Alignment is jiwer's (Levenshtein over token lists); the tokenisation is ours,
handed to jiwer already split.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Mapping, Sequence

import jiwer

# CJK ideographs (URO, extension A, compatibility), hiragana and katakana: scripts written without spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_APOSTROPHES = re.compile(r"(?<=\w)['’‘`](?=\w)")


def normalise(text: str | None) -> str:
    """The text as it is scored: NFKC, lower case, in-word apostrophes dropped, punctuation and symbols spaces."""
    text = _APOSTROPHES.sub("", unicodedata.normalize("NFKC", text or "").casefold())
    return "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)


def asr_tokens(text: str | None) -> list[str]:
    """The tokens of a normalised text: each CJK character alone, other runs split at whitespace."""
    return _TOKEN.findall(normalise(text))


def error_counts(refs: Sequence[str | None], hyps: Sequence[str | None]) -> dict[str, int]:
    """Substitutions, deletions, insertions, hits and reference tokens summed over the pairs.  An empty
    reference counts its hypothesis' tokens as insertions: a model that talks over silence made errors."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    counts = dict.fromkeys(("substitutions", "deletions", "insertions", "hits", "ref_words"), 0)
    if not refs:
        return counts
    ref_tokens, hyp_tokens = [asr_tokens(r) for r in refs], [asr_tokens(h) for h in hyps]
    # Already tokens: joined with single spaces, jiwer's default transform splits them back unchanged.
    out = jiwer.process_words([" ".join(t) for t in ref_tokens], [" ".join(t) for t in hyp_tokens])
    for key in ("substitutions", "deletions", "insertions", "hits"):
        counts[key] = int(getattr(out, key))
    counts["ref_words"] = sum(map(len, ref_tokens))
    return counts


def wer_scores(records: Sequence[Mapping]) -> dict:
    """``{"wer", "n", "errors", "ref_words", "substitutions", "deletions", "insertions"}`` of decode records
    (``hyp`` against ``ref``); a record without a reference (``ref`` None) is not scored, and ``wer`` is None
    when no reference token is left."""
    scored = [r for r in records if r.get("ref") is not None]
    counts = error_counts([r["ref"] for r in scored], [r.get("hyp") for r in scored])
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    return {"wer": errors / counts["ref_words"] if counts["ref_words"] else None, "n": len(scored),
            "errors": errors, "ref_words": counts["ref_words"],
            **{k: counts[k] for k in ("substitutions", "deletions", "insertions")}}
