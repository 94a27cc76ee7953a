"""Caption cleaning applied to every prompt before T5 (Open-Sora ``text_preprocessing``).

Open-Sora inherits the caption cleaner of PixArt-alpha / DeepFloyd IF and runs it
**twice** on each prompt (after the score suffix is appended), because the captions
of the training set went through the same double pass. The result must match the
official text character for character: one different character changes the T5
tokens and therefore the video. The steps below are a faithful rewrite of
``clean_caption`` in opensora/models/text_encoder/t5.py (identical in v1.0, v1.1 and
v1.2), reorganised as an ordered table of regex rules with the non-regex steps
(URL unquoting, HTML stripping, ftfy) in between.

Quirks that are part of the contract, on purpose:

* ``urllib.parse.unquote_plus`` runs first, so ``+`` becomes a space and ``%41`` an ``a``;
* the whole text is lower-cased, so ``4K`` becomes ``4k``;
* a mid-way ``strip()`` in the official code discards its result, so trailing
  spaces left by the last substitutions only go away in the final strip;
* ``&amp`` is deleted (not unescaped) when it survives HTML parsing.

``ftfy`` and ``beautifulsoup4`` are imported on first use; the reference outputs were
produced with ftfy 6.3.1 and beautifulsoup4 4.15.0.
"""

from __future__ import annotations

import html
import re
import urllib.parse
import warnings
from typing import Pattern

# ---------------------------------------------------------------------------
# Rule tables (order matters: each rule sees the output of the previous one)
# ---------------------------------------------------------------------------

Rule = tuple[Pattern[str], str]


def _rules(*pairs: tuple[str, str]) -> tuple[Rule, ...]:
    return tuple((re.compile(pattern), repl) for pattern, repl in pairs)


_TLDS = r"(?:com|co|ru|net|org|edu|gov|it)"

# follows clean_caption: link removal, before HTML parsing.
_LINKS = _rules(
    (r"<person>", "person"),
    (r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _TLDS + r"[\w/-]*\b\/?(?!@)))", ""),
    (r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _TLDS + r"[\w/-]*\b\/?(?!@)))", ""),
)

# Characters the cleaner treats as noise and turns into a single space (runs included).
_NOISE_CHARS = "#®•©™&@·º½¾¿¡§~)(][}{|\\/*"

# Dashes and hyphens of every script, folded to "-".
_DASHES = (
    r"\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40"
    r"\u301C\u3030\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D"
)

# East-Asian blocks that are dropped: CJK strokes, katakana phonetic extensions,
# enclosed CJK letters, CJK compatibility, CJK ideographs (extension A and unified),
# Yijing hexagrams. Consecutive blocks, deleted as one class.
_CJK_BLOCKS = r"\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff"

_FILE_EXTENSIONS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"

# follows clean_caption: handles, scripts, punctuation and web debris, after HTML parsing.
_SYMBOLS = _rules(
    (r"@[\w\d]+\b", ""),  # @handles
    ("[" + _CJK_BLOCKS + "]+", ""),
    ("[" + _DASHES + "]+", "-"),
    (r"[`´«»“”¨]", '"'),  # double quotes of all styles
    (r"[‘’]", "'"),  # single curly quotes
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IPv4 addresses
    (r"\d:\d\d\s+$", ""),  # trailing "1:23"-style ids
    (r"\\n", " "),  # a literal backslash-n
    (r"#\d{1,3}\b", ""),  # "#12"
    (r"#\d{5,}\b", ""),  # "#123456"
    (r"\b\d{6,}\b", ""),  # long numbers
    (r"[\S]+\." + _FILE_EXTENSIONS, ""),  # file names
    (r"[\"\']{2,}", '"'),  # runs of quotes
    (r"[\.]{2,}", " "),  # ellipses
    ("[" + re.escape(_NOISE_CHARS) + "]{1,}", " "),
    (r"\s+\.\s+", " "),  # a lone " . "
)

# Separators of slug-like captions ("my-cute-cat", "my_cute_cat").
_SLUG_SEPARATOR = re.compile(r"(?:\-|\_)")
_MAX_SEPARATORS = 3

# follows clean_caption: product codes, shop phrases and spacing, after ftfy.
_WORDS = _rules(
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # "jc6640"
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # "jc6640vc"
    (r"\b\d+[a-zA-Z]+\d+\b", ""),  # "6640vc231"
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b" + _FILE_EXTENSIONS + r"(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # "j2d1a2a"
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # sizes "1920x1080" (latin x, cyrillic х, ×)
    (r"\b\s+\:\s+", ": "),
    (r"(\D[,\./])\b", r"\1 "),  # a space after punctuation glued to the next word
    (r"\s+", " "),
)

# follows clean_caption: trimming of the ends.
_ENDS = _rules(
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),  # surrounding quotes
    (r"^[\'\_,\-\:;]", ""),
    (r"[\'\_,\-\:\-\+]$", ""),
    (r"^\.\S+$", ""),  # a lone ".word"
)


# ---------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------


def _apply(rules: tuple[Rule, ...], text: str) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


def _strip_html(text: str) -> str:
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

    with warnings.catch_warnings():  # a prompt that looks like a path or URL is still a prompt
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        return BeautifulSoup(text, features="html.parser").text


def _fix_unicode(text: str) -> str:
    """ftfy repair, then HTML entities unescaped twice, then strip (``basic_clean``)."""
    import ftfy

    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def clean_caption(text: str) -> str:
    """One pass of the official caption cleaner (use :func:`text_preprocessing` for prompts)."""
    text = urllib.parse.unquote_plus(str(text))
    text = text.strip().lower()
    text = _apply(_LINKS, text)
    text = _strip_html(text)
    text = _apply(_SYMBOLS, text)
    if len(_SLUG_SEPARATOR.findall(text)) > _MAX_SEPARATORS:
        text = _SLUG_SEPARATOR.sub(" ", text)
    text = _fix_unicode(text)
    text = _apply(_WORDS, text)
    text = _apply(_ENDS, text)
    return text.strip()


def text_preprocessing(text: str, clean: bool = True) -> str:
    """The prompt text T5 sees: the caption cleaner applied twice (official ``text_preprocessing``).

    With ``clean=False`` only lower-casing and stripping happen (``use_text_preprocessing=False``).
    """
    if not clean:
        return text.lower().strip()
    return clean_caption(clean_caption(text))


__all__ = ["clean_caption", "text_preprocessing"]
