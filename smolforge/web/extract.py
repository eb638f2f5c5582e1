"""HTML to clean text: decoding, links, and the title, date and paragraphs of one page.

Works on old-fashioned pages (layout tables, `<font>`, paragraphs separated by
`<br><br>`, no `<p>` at all) as well as modern ones (`<article>`, `<main>`). Scripts,
styles and navigation are dropped; a block of text that is mostly link text (a menu, an
index of links) is dropped too. Footnote markers and a trailing notes section are
handled as `ExtractOptions` say.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urldefrag, urljoin, urlsplit

import charset_normalizer
from bs4 import BeautifulSoup, Comment, NavigableString, Tag

NotesMode = Literal["drop", "keep", "field"]

# Elements that end a line of text; everything else is inline (<font>, <b>, <a>, ...).
_BLOCK = frozenset(
    "address article aside blockquote body center dd details dialog div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 header hr html li main nav ol p pre "
    "section summary table tbody td tfoot th thead tr ul".split()
)
_DROP = frozenset(
    "script style noscript template iframe svg canvas nav button select input "
    "textarea object embed aside header footer head".split()  # title and date are read first
)
_DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search"})
_BOILERPLATE = frozenset(
    "nav navbar navigation menu sidebar footer breadcrumb breadcrumbs comments share social cookie cookies".split()
)
# Private-use markers in the text stream: a <br>, the start / end of link text, and the
# edge of a block element (source whitespace is collapsed, so it cannot carry these).
_BR, _LINK_ON, _LINK_OFF, _EDGE = "\ue000", "\ue001", "\ue002", "\ue003"
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_:.-]+)""", re.I)
_MONTHS = "january february march april may june july august september october november december".split()
_DATE_LINE = re.compile(
    r"^(?:(?P<month>[A-Za-z]+)\s+(?:(?P<day>\d{1,2}),?\s+)?(?P<year>\d{4})"
    r"|(?P<iso>\d{4}-\d{2}(?:-\d{2})?))$"
)


@dataclass(frozen=True)
class ExtractOptions:
    """How one page is cleaned (values come from params.yaml, section scrape)."""

    max_link_density: float  # a block with a larger share of link characters is navigation
    footnote_pattern: str  # regex of in-text footnote markers to delete; "" keeps them
    notes: NotesMode  # trailing notes section: drop it, keep it in the text, or move it aside
    notes_heading: str  # regex a whole paragraph matches to start the notes (case-insensitive)


@dataclass
class Document:
    """One page's clean content; `text` joins paragraphs with a blank line."""

    title: str
    date: str | None  # ISO: YYYY-MM-DD or YYYY-MM
    paragraphs: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


# ---- decoding


def _codec(label: str | bytes | None) -> str | None:
    """Python codec name for a charset label; Latin-1 and ASCII read as windows-1252 (as browsers do)."""
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "ignore")
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    return "cp1252" if name in ("latin-1", "iso8859-1", "ascii") else name


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _guess(body: bytes) -> str:
    """Best guess for undeclared, non-UTF-8 bytes; ties go to windows-1252, the web's legacy default."""
    matches = list(charset_normalizer.from_bytes(body))
    if not matches:
        return "cp1252"
    best = min((m.chaos, -m.coherence) for m in matches)
    tied = [m for m in matches if (m.chaos, -m.coherence) == best]
    if any("cp1252" in m.could_be_from_charset for m in tied):
        return "cp1252"
    return tied[0].encoding


def decode_html(body: bytes, content_type: str | None) -> tuple[str, str]:
    """Decode a page: BOM, then the HTTP charset, then `<meta charset>`, then detection.

    A declared charset that cannot decode the bytes is ignored (servers often lie), and
    a declared Latin-1 / windows-1252 page whose bytes are valid UTF-8 with non-ASCII
    characters is read as UTF-8. Returns the text and the codec used.
    """
    for bom, enc in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if body.startswith(bom):
            return body[len(bom) :].decode(enc, "replace"), enc
    header = re.search(r"charset\s*=\s*([^\s;]+)", content_type or "", re.I)
    meta = _META_CHARSET.search(body[:4096])
    declared = [_codec(header.group(1) if header else None), _codec(meta.group(1) if meta else None)]
    for enc in filter(None, declared):
        if enc == "cp1252" and not body.isascii() and _is_utf8(body):
            return body.decode("utf-8"), "utf-8"
        try:
            return body.decode(enc), enc
        except UnicodeDecodeError:
            continue
    if _is_utf8(body):
        return body.decode("utf-8"), "utf-8"
    enc = _guess(body)
    return body.decode(enc, "replace"), enc


# ---- links


def find_links(html: str, base_url: str) -> list[str]:
    """Absolute http(s) URLs of every `<a href>`, in document order, fragments removed."""
    soup = BeautifulSoup(html, "html.parser")
    base = soup.find("base", href=True)
    if isinstance(base, Tag):
        base_url = urljoin(base_url, str(base["href"]))
    out = []
    for a in soup.find_all("a", href=True):
        url = urldefrag(urljoin(base_url, str(a["href"]).strip())).url
        if urlsplit(url).scheme in ("http", "https"):
            out.append(url)
    return out


# ---- title, date, paragraphs


def extract(html: str, opts: ExtractOptions) -> Document:
    """Title, optional date and body paragraphs (and notes) of one HTML page."""
    soup = BeautifulSoup(html, "html.parser")
    title = _title(soup)
    date = _meta_date(soup)
    _drop_boilerplate(soup)
    root = _content_root(soup)
    paras = _paragraphs(root, opts.max_link_density)
    if paras and title and paras[0].casefold() == title.casefold():
        paras = paras[1:]  # the page repeats its title as a heading
    if paras and (line_date := _date_line(paras[0])):
        date, paras = date or line_date, paras[1:]
    notes: list[str] = []
    if opts.notes != "keep":
        paras, notes = _split_notes(paras, opts.notes_heading)
        notes = notes if opts.notes == "field" else []
    if opts.footnote_pattern:
        rx = re.compile(rf"[ \t]*(?:{opts.footnote_pattern})")
        paras = [p for p in (rx.sub("", p).strip() for p in paras) if p]
    return Document(title=title, date=date, paragraphs=paras, notes=notes)


def _text(node: Tag | None) -> str:
    return " ".join(node.get_text(" ").split()) if node is not None else ""


def _title(soup: BeautifulSoup) -> str:
    og = soup.find("meta", attrs={"property": "og:title"})
    if isinstance(og, Tag) and og.get("content"):
        return " ".join(str(og["content"]).split())
    scope = soup.find("article") or soup.find("main") or soup
    return _text(scope.find("h1")) or _text(soup.find("title"))


def _meta_date(soup: BeautifulSoup) -> str | None:
    for attrs in ({"property": "article:published_time"}, {"name": "date"}, {"name": "dc.date"}):
        tag = soup.find("meta", attrs=attrs)
        if isinstance(tag, Tag) and (d := _iso_date(str(tag.get("content", "")))):
            return d
    tag = soup.find("time", datetime=True)
    return _iso_date(str(tag["datetime"])) if isinstance(tag, Tag) else None


def _iso_date(s: str) -> str | None:
    m = re.match(r"(\d{4})-(\d{2})(?:-(\d{2}))?", s.strip())
    return m.group(0) if m else None


def _date_line(line: str) -> str | None:
    """A PG-style date line ("June 2021", "June 3, 2021", "2021-06-03") as ISO."""
    m = _DATE_LINE.match(line.strip())
    if not m:
        return None
    if m["iso"]:
        return m["iso"]
    month = m["month"].lower()
    if month not in _MONTHS:
        return None
    ym = f"{m['year']}-{_MONTHS.index(month) + 1:02d}"
    return f"{ym}-{int(m['day']):02d}" if m["day"] else ym


def _is_boilerplate(tag: Tag) -> bool:
    if tag.name in _DROP or str(tag.get("role", "")).lower() in _DROP_ROLES:
        return True
    names = " ".join(tag.get("class") or []) + " " + str(tag.get("id") or "")
    return bool(_BOILERPLATE & set(re.split(r"[-_\s]+", names.lower())))


def _drop_boilerplate(soup: BeautifulSoup) -> None:
    for c in soup.find_all(string=lambda s: isinstance(s, Comment)):
        c.extract()
    for tag in soup.find_all(_is_boilerplate):
        if not tag.decomposed:
            tag.decompose()
    for sup in soup.find_all("sup"):  # <sup><a>1</a></sup> reads as the marker "[1]"
        m = re.fullmatch(r"\[?(\d{1,3})\]?", sup.get_text().strip())
        if m:
            sup.replace_with(f"[{m.group(1)}]")


def _content_root(soup: BeautifulSoup) -> Tag:
    """The largest <article>, else <main>, else the body: old pages have neither."""
    articles = soup.find_all("article")
    if articles:
        return max(articles, key=lambda a: len(a.get_text()))
    return soup.find("main") or soup.find(attrs={"role": "main"}) or soup.body or soup


def _paragraphs(root: Tag, max_link_density: float) -> list[str]:
    """Walk the tree into a marked-up text stream, then cut it into paragraphs."""
    parts: list[str] = []
    _walk(root, parts)
    paras = []
    for chunk in re.split(rf"{_EDGE}|{_BR}\s*(?:{_BR}\s*)+", "".join(parts)):
        para = _clean(chunk)
        if para and _link_density(chunk) <= max_link_density:
            paras.append(para)
    return paras


def _walk(root: Tag, parts: list[str]) -> None:
    """Append `root`'s text to `parts` with markers for <br>, links and block edges.

    Iterative, with an explicit stack: real pages can nest deeper than Python's recursion limit.
    """
    stack, closers = [iter(root.children)], [""]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            parts.append(closers.pop())
        elif isinstance(child, NavigableString):
            if type(child) is NavigableString:  # not a comment, doctype or CDATA
                parts.append(re.sub(r"\s+", " ", str(child)))
        elif isinstance(child, Tag):
            opener, closer = _markers(child)
            if child.name == "br":
                parts.append(_BR)
            elif child.name == "pre":
                parts.append(_EDGE + child.get_text().strip("\n").replace("\n", _BR) + _EDGE)
            else:
                parts.append(opener)
                stack.append(iter(child.children))
                closers.append(closer)


def _markers(tag: Tag) -> tuple[str, str]:
    """What goes before and after a tag's text: link markers, block edges, list bullets."""
    if tag.name == "a" and tag.has_attr("href"):
        return _LINK_ON, _LINK_OFF
    if tag.name in _BLOCK:
        return _EDGE + _list_prefix(tag), _EDGE
    return "", ""


def _list_prefix(li: Tag) -> str:
    if li.name != "li":
        return ""
    parent = li.parent
    if parent is not None and parent.name == "ol":
        return f"{1 + sum(1 for s in li.find_previous_siblings('li'))}. "
    return "- "


def _link_density(chunk: str) -> float:
    total = len(re.sub(rf"[\s{_LINK_ON}{_LINK_OFF}{_BR}]", "", chunk))
    linked = sum(len(re.sub(r"\s", "", m)) for m in re.findall(rf"{_LINK_ON}([^{_LINK_OFF}]*)", chunk))
    return linked / total if total else 0.0


def _clean(chunk: str) -> str:
    """Collapse HTML whitespace; a single <br> stays a line break."""
    chunk = chunk.replace(_LINK_ON, "").replace(_LINK_OFF, "")
    lines = (" ".join(line.split()) for line in chunk.split(_BR))
    return "\n".join(line for line in lines if line)


def _split_notes(paras: list[str], heading: str) -> tuple[list[str], list[str]]:
    """Cut at the first paragraph (not the first one) that is a notes heading."""
    rx = re.compile(heading, re.I)
    for i, p in enumerate(paras[1:], 1):
        if rx.fullmatch(p.strip().rstrip(":")):
            return paras[:i], paras[i + 1 :]
    return paras, []
