"""smolforge.web.extract: encodings, links, and title / date / paragraphs of old and modern pages."""

from __future__ import annotations

import codecs

import pytest

from smolforge.web.extract import ExtractOptions, decode_html, extract, find_links

OPTS = ExtractOptions(
    max_link_density=0.5, footnote_pattern=r"\[\d{1,3}\]", notes="drop", notes_heading="(notes|footnotes)"
)
WESTERN = "It’s a “small” thing — café, naïve, the fiancée’s résumé."

# An essay page the way hand-written sites were made around 2000: a layout table with a
# navigation column, <font>, paragraphs separated by <br><br>, a date line, a footnote
# marker that is a link, a trailing Notes section, a script and a style.
OLD = """<html><head><title>Small Tools</title>
<script>var s = "<p>not text</p>";</script><style>p { color: red }</style></head>
<body bgcolor="#ffffff"><table border=0><tr valign=top>
<td bgcolor="#ff9922"><a href="index.html"><font size=1>Home</font></a><br>
<a href="articles.html"><font size=1>Essays</font></a><br><a href="rss.xml">RSS</a></td>
<td width=435><font size=2 face="verdana">June 2021<br><br>The first paragraph,
which the source wraps over two lines.[<a href="#f1n"><font color=#999999>1</font></a>]
<br><br>The second&nbsp;paragraph <b>has bold</b> and <i>italics</i>.<br><br>
<!-- a comment that is not text -->
<b>Notes</b><br><br>[<a name="f1n"><font color=#000000>1</font></a>] The note itself.<br><br>
Thanks to A for reading drafts.</font></td></tr></table></body></html>"""

MODERN = """<!doctype html><html><head><meta charset="utf-8">
<title>A Post | My Blog</title><meta property="article:published_time" content="2024-03-05T10:00:00Z">
</head><body><header><nav><a href="/">Home</a> <a href="/about">About</a></nav><h1>My Blog</h1></header>
<main><article><header><h1>A Post</h1><time datetime="2024-03-05">March 5</time></header>
<p>Hello <a href="/x">world</a>, this is the text<sup><a href="#fn1">1</a></sup>.</p>
<h2>A section</h2><p>More text.</p><ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>
<div class="share-buttons">Share this on everything</div>
<section class="footnotes"><h2>Footnotes</h2><p>1. A footnote.</p></section>
</article><aside>Related posts</aside></main><footer>(c) me</footer></body></html>"""


def test_old_fashioned_page():
    doc = extract(OLD, OPTS)
    assert doc.title == "Small Tools" and doc.date == "2021-06"
    assert doc.paragraphs == [
        "The first paragraph, which the source wraps over two lines.",
        "The second paragraph has bold and italics.",
    ]
    assert doc.notes == []
    assert doc.text == "\n\n".join(doc.paragraphs)


def test_modern_article():
    doc = extract(MODERN, OPTS)
    assert doc.title == "A Post" and doc.date == "2024-03-05"
    assert doc.paragraphs == [
        "Hello world, this is the text.",
        "A section",
        "More text.",
        "- one",
        "- two",
        "1. first",
        "2. second",
    ]


@pytest.mark.parametrize(
    ("notes", "paragraphs", "kept_notes"),
    [
        ("drop", 2, []),
        ("keep", 5, []),
        ("field", 2, ["[1] The note itself.", "Thanks to A for reading drafts."]),
    ],
)
def test_notes_section_modes(notes, paragraphs, kept_notes):
    doc = extract(OLD, ExtractOptions(0.5, r"\[\d{1,3}\]", notes, "(notes|footnotes)"))
    assert len(doc.paragraphs) == paragraphs and doc.notes == kept_notes
    if notes == "keep":
        assert doc.paragraphs[2] == "Notes" and doc.paragraphs[3] == "The note itself."


def test_footnote_markers_kept_when_the_pattern_is_empty():
    doc = extract(OLD, ExtractOptions(0.5, "", "drop", "notes"))
    assert doc.paragraphs[0].endswith("two lines.[1]")


def test_paragraphs_from_unclosed_p_tags_and_single_br_line_breaks():
    page = "<body><font>Para one<p>Para two<br>same paragraph<p>Para three</font></body>"
    assert extract(page, OPTS).paragraphs == ["Para one", "Para two\nsame paragraph", "Para three"]


def test_blocks_that_are_mostly_links_are_dropped():
    page = (
        "<body><p><a href='/a'>Alpha</a> | <a href='/b'>Beta</a> | <a href='/c'>Gamma</a></p>"
        "<p>A sentence with <a href='/x'>one link</a> in it stays.</p></body>"
    )
    assert extract(page, OPTS).paragraphs == ["A sentence with one link in it stays."]
    assert len(extract(page, ExtractOptions(1.0, "", "drop", "notes")).paragraphs) == 2


@pytest.mark.parametrize(
    ("line", "iso"),
    [
        ("June 2021", "2021-06"),
        ("June 3, 2021", "2021-06-03"),
        ("2020-01-31", "2020-01-31"),
        ("Summer 2021", None),
    ],
)
def test_date_lines(line, iso):
    doc = extract(f"<body>{line}<br><br>Text.</body>", OPTS)
    assert doc.date == iso
    assert doc.paragraphs == (["Text."] if iso else [line, "Text."])


def test_title_falls_back_from_og_title_to_h1_to_title():
    og = '<head><meta property="og:title" content="OG"><title>T</title></head><body><h1>H</h1></body>'
    assert extract(og, OPTS).title == "OG"
    assert extract("<head><title>T</title></head><body><h1>H</h1>x</body>", OPTS).title == "H"
    assert extract("<head><title> T  t </title></head><body>x</body>", OPTS).title == "T t"
    assert extract("<body>x</body>", OPTS).title == ""


def test_preformatted_text_keeps_its_lines():
    doc = extract("<body><p>Intro</p><pre>line one\nline two</pre></body>", OPTS)
    assert doc.paragraphs == ["Intro", "line one\nline two"]


# ---- decoding


def test_charset_from_the_http_header():
    body = f"<p>{WESTERN}</p>".encode("cp1252")
    assert decode_html(body, "text/html; charset=windows-1252") == (f"<p>{WESTERN}</p>", "cp1252")


def test_charset_declared_only_in_a_meta_tag():
    text = f'<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252"></head><body>{WESTERN}'
    assert decode_html(text.encode("cp1252"), "text/html")[0] == text
    text = '<meta charset="koi8-r"><p>Привет, мир</p>'
    assert decode_html(text.encode("koi8-r"), None) == (text, "koi8-r")


def test_a_wrong_utf8_header_is_overruled():
    body = f"<p>{WESTERN}</p>".encode("cp1252")  # not valid UTF-8
    assert decode_html(body, "text/html; charset=utf-8") == (f"<p>{WESTERN}</p>", "cp1252")


def test_a_latin1_header_on_utf8_bytes_reads_utf8():
    body = f"<p>{WESTERN}</p>".encode()
    assert decode_html(body, "text/html; charset=ISO-8859-1") == (f"<p>{WESTERN}</p>", "utf-8")


def test_no_charset_at_all():
    western = f"<html><body><p>{WESTERN} Some more plain English words.</p></body></html>"
    assert decode_html(western.encode(), "text/html") == (western, "utf-8")
    assert decode_html(western.encode("cp1252"), "text/html") == (western, "cp1252")
    russian = "<html><body><p>Это простой текст на русском языке, написанный для проверки.</p></body></html>"
    assert decode_html(russian.encode("cp1251"), None)[0] == russian


def test_byte_order_marks_win():
    assert decode_html(codecs.BOM_UTF8 + "é".encode(), "text/html; charset=cp1252") == ("é", "utf-8")
    assert decode_html(codecs.BOM_UTF16_LE + "é".encode("utf-16-le"), None) == ("é", "utf-16-le")


def test_an_unknown_charset_label_is_ignored():
    assert decode_html("é".encode(), "text/html; charset=nonsense-9") == ("é", "utf-8")


# ---- links


def test_links_resolved_in_document_order_without_fragments_or_other_schemes():
    page = (
        '<a href="b.html#top">b</a><a href="/c">c</a><a href="mailto:x@y.z">m</a>'
        '<a href="javascript:void(0)">j</a><a href="https://other.org/d">d</a><a name="x">no href</a>'
    )
    assert find_links(page, "http://site.org/dir/a.html") == [
        "http://site.org/dir/b.html",
        "http://site.org/c",
        "https://other.org/d",
    ]


def test_links_honour_base_href():
    page = '<head><base href="http://cdn.org/x/"></head><a href="y.html">y</a>'
    assert find_links(page, "http://site.org/") == ["http://cdn.org/x/y.html"]
