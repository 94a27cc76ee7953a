"""Caption cleaning: the official ``text_preprocessing`` reproduced character for character.

Expected strings were produced by the official Open-Sora ``text_preprocessing``
(ftfy 6.3.1, beautifulsoup4 4.15.0) on inputs chosen to exercise each rule.
"""

from __future__ import annotations

import pytest

from opensora_core.text.cleaning import clean_caption, text_preprocessing

OFFICIAL = [
    ("C++ code%20sample + more", "c code sample more"),
    ("Visit www.example.com/path?q=1 or https://foo.org now", "visit ?q=1 or now"),
    ("<p>Hello <i>World</i></p> &amp;amp; &quot;quoted&quot; &lt;tag&gt;", "hello world ; \"quoted\""),
    ("東京 tower 日本語 テスト カタカナ ㇰ ㈱ ㌔", "tower テスト カタカナ"),
    ("em—dash en–dash minus − hyphen‐ ‒ ― ~ wave 〜", "em dash en dash minus − hyphen wave"),
    ("«guillemets» ‘single’ `back` ´acute ¨", "guillemets\" 'single' \"back\" \"acute"),
    ("IP 192.168.0.1 and id 3:45  ", "ip and id 3:45"),
    ("literal \\n newline #12 #1234 #123456 1234567 word", "literal newline 1234 word"),
    ("file photo.jpg and video.mp4 and doc.PDF", "file and and"),
    ("'''triple''' ... ellipsis.... end", "\"triple\" ellipsis end"),
    ("***AUSVERKAUFT*** #AUSVERKAUFT [x] {y} (z) a|b c/d e\\f", "ausverkauft ausverkauft x y z a b c d e f"),
    ("this-is-my-cute-cat-photo", "this is my cute cat photo"),
    ("snake_case_name_here_x", "snake case name here x"),
    ("a-b-c", "a-b-c"),
    ("a_b c-d", "a_b c-d"),
    ("jc6640 jc6640vc 6640vc231 j2d1a2a model A1B2C3", "model"),
    ("free shipping worldwide free shipping download free click for more", ""),
    ("png images page 12 jpg image", ""),
    ("size 1920x1080 and 3.5×2 and 10х20", "size and and"),
    ("time : 12 , hello,world.this/that", "time: 12 , hello, world. this that"),
    ("\"quoted whole caption\"", "quoted whole caption"),
    ("-leading dash", "leading dash"),
    ("trailing plus+", "trailing plus"),
    (".hidden", ""),
    ("Ã©tÃ© mojibake cafÃ©", "ã tã mojibake cafã"),
    ("emoji 😀 and ½ ¾ ® © ™ •", "emoji 😀 and"),
    ("<person> walks a dog", "person walks a dog"),
    ("mailto:a@b.com user@example.com", "mailto:a user"),
    ("a . b . c", "a b c"),
    ("100% cotton & 50+ colors", "100% cotton 50 colors"),
    ("&#39;entity&#39; &amp;lt;b&amp;gt;", "entity' lt;b gt;"),
    ("numbers 12345 123456 12:30", "numbers 12345 12:30"),
    ("the year 2024 in 4K, 8k resolution, 60fps", "the year 2024 in 4k, 8k resolution, 60fps"),
    ("'quote' at start and end'", "quote' at start and end"),
    ("price: $9.99!!! (limited)", "price: $9.99!!! limited"),
    ("tab\there\nnewline", "tab here newline"),
    ("don’t stop — “never”", "don't stop - \"never\""),
    (
        "A Cat. aesthetic score: 6.5. motion score: 4.0. camera motion: pan left.",
        "a cat. aesthetic score: 6.5. motion score: 4.0. camera motion: pan left.",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), OFFICIAL)
def test_matches_the_official_cleaner(raw, expected):
    assert text_preprocessing(raw) == expected


@pytest.mark.parametrize(
    ("raw", "once", "twice"),
    [
        ("a%2520b", "a%20b", "a b"),  # URL-unquoting happens once per pass
        ("-'a'-", "'a'", "a"),  # quotes exposed by the first pass go in the second
        ("___x", "__x", "_x"),
    ],
)
def test_preprocessing_is_two_passes(raw, once, twice):
    assert clean_caption(raw) == once
    assert text_preprocessing(raw) == twice


def test_reference_rows(reference):
    import json

    table = json.loads((reference / "v1_2/cases/inference_tables/table.json").read_text())
    for row in table["text_preprocessing"]:
        assert text_preprocessing(row["raw"]) == row["text_preprocessing"]


def test_without_cleaning_only_lowercases_and_strips():
    assert text_preprocessing("  A Cat #1 http://x.com  ", clean=False) == "a cat #1 http://x.com"


def test_url_like_prompt_emits_no_warning(recwarn):
    text_preprocessing("photo.jpg")
    assert not [w for w in recwarn if "MarkupResemblesLocator" in type(w.message).__name__]
