"""What the judges read in a model's output: its <thought>/<response> parts, words, quotations, stock phrases.

The offline stand-in's rules and the computed keys of the ``grounded`` rubric
(``quotation``, ``coverage``) are built from these, and so is stage 8's format
reward; they live apart from :mod:`local.eval.judge` so that the rubric
registry and the backends stay readable.  English is tokenised into words,
Chinese (which has no spaces) into characters.
"""
from __future__ import annotations

import re

from local.reasoning.checks import EIPS_FORMAT, QUOTED

_TAG = re.compile(r"</?(?:thought|response)>")
_THOUGHT = re.compile(r"<thought>(.*?)</thought>", re.DOTALL)
_RESPONSE = re.compile(r"<response>(.*?)</response>", re.DOTALL)
_TOKEN = re.compile(r"[\u4e00-\u9fff]|[^\W\d_\u4e00-\u9fff]+(?:'[^\W\d_\u4e00-\u9fff]+)?|\d+")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_SENTENCES = re.compile(r"(?<=[.!?。！？])\s*")


def format_reward(text: str) -> float:
    """CogAudio's R_fmt: 1.0 iff the output is exactly one non-empty ``<thought>…</thought>``
    followed by one non-empty ``<response>…</response>`` and nothing else, else 0.0.

    Empty tags earn nothing: a policy must not be paid for the scaffolding alone.
    """
    match = EIPS_FORMAT.fullmatch(text or "")
    if not match or len(_TAG.findall(text)) != 4:
        return 0.0
    return float(bool(match["thought"].strip() and match["response"].strip()))


def split_eips(output: str) -> tuple[str, str]:
    """(thought, response) of an output; without tags the whole output is the response."""
    thought = _THOUGHT.search(output)
    response = _RESPONSE.search(output)
    if response:
        return (thought[1].strip() if thought else ""), response[1].strip()
    if thought:
        return thought[1].strip(), _TAG.sub(" ", output[thought.end():]).strip()
    return "", _TAG.sub(" ", output).strip()


def tokens(text: str) -> list[str]:
    """Lower-cased words, and single characters for Chinese (it has no spaces)."""
    return _TOKEN.findall(text.lower())


STOPWORDS = frozenset("""
a an the and or but so of in on at to for with from by about as into than then that this these those it its
is are was were be been being am do does did have has had will would can could should may might must shall
i me my mine you your yours we us our they them their he him his she her what which who how why when where
there here not no yes oh well okay ok just very really quite more most some any all much many one
""".split())
CJK_STOPWORDS = frozenset("我你他她它的了是在不这那就都也很吗呢吧啊和与有个")


def content_tokens(text: str) -> set[str]:
    """Words that carry content: English words of 3+ letters outside STOPWORDS, Chinese character bigrams."""
    words = {w for w in tokens(text) if not _CJK.match(w) and len(w) >= 3 and w not in STOPWORDS}
    cjk = [c for c in _CJK.findall(text) if c not in CJK_STOPWORDS]
    return words | {a + b for a, b in zip(cjk, cjk[1:])}


def extract_quotes(output: str) -> list[str]:
    """The double-quoted spans of an output ("…" or “…”), in order, stripped, duplicates dropped."""
    spans = ((m.group(1) or m.group(2) or "").strip() for m in QUOTED.finditer(output))
    return list(dict.fromkeys(s for s in spans if s))


def find_span(seq: list[str], sub: list[str]) -> int:
    """Where ``sub`` starts as a contiguous run of ``seq``, -1 if nowhere: a quotation counts word for word."""
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


def quotation(output: str, transcript: str) -> dict[str, float]:
    """``quotation`` (1 if the output quotes anything) and ``coverage`` (the fraction of the
    transcript's words inside quotes that occur in it verbatim, word for word)."""
    quotes, words = extract_quotes(output), tokens(transcript)
    covered: set[int] = set()
    for quote in quotes:
        q = tokens(quote)
        start = find_span(words, q) if q else -1
        if start >= 0:
            covered.update(range(start, start + len(q)))
    return {"quotation": float(bool(quotes)), "coverage": len(covered) / len(words) if words else 0.0}


# Stock empathy: sentences a reply can say to anyone about anything (CogAudio §1: "safe" empathy
# templates).  A sentence is stock when little content is left once these are removed.
STOCK_PHRASES = re.compile("|".join([
    r"i (?:completely |totally |really )?understand(?: how you(?:'re| are)? feel(?:ing)?| what you(?:'re| are) "
    r"going through| your feelings)?",
    r"i(?:'m| am) (?:always )?here (?:for you|to help|to listen|with you)",
    r"i(?:'m| am) (?:so |really |very )?sorry (?:to hear (?:that|this)|you(?:'re| are) (?:going through|feeling) "
    r"(?:this|that))",
    r"that (?:sounds|must be|must feel) (?:really |very |so )?(?:hard|difficult|tough|rough)",
    r"thanks? (?:you )?for sharing(?: (?:that|this))?(?: with me)?",
    r"(?:is there )?anything (?:else )?i can (?:do|help)(?: with| for you)?",
    r"how can i help(?: you)?",
    r"everything will (?:be )?(?:ok(?:ay)?|fine|alright|all right|work out)",
    r"(?:don't|do not) worry",
    r"take care(?: of yourself)?",
    r"stay (?:positive|strong)",
    r"it(?:'s| is) (?:okay|ok|normal|natural|understandable) to feel (?:that way|this way|like (?:this|that))",
    r"feel free to (?:reach out|talk|share)",
    r"i hear you",
    r"your feelings are valid",
    r"you(?:'re| are) not alone",
    r"我(?:能|很)?理解你的(?:感受|心情)", r"别担心", r"一切都会好起来的?", r"加油", r"我一直都在", r"我在这里陪着你",
    r"有什么我可以帮(?:你|忙)的吗",
]), re.IGNORECASE)


def generic_fraction(text: str) -> float:
    """The share of sentences that are stock: they hold a stock phrase, and fewer than two
    content words are left without it; 1.0 for an empty text."""
    sentences = [s for s in _SENTENCES.split(text.strip()) if s.strip()]
    if not sentences:
        return 1.0
    stock = sum(bool(STOCK_PHRASES.search(s)) and len(content_tokens(STOCK_PHRASES.sub(" ", s))) < 2
                for s in sentences)
    return stock / len(sentences)
