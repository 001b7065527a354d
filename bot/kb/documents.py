"""Documents to passages: text from ``.md``, ``.txt``, ``.rst``, ``.html``/``.htm``, ``.pdf`` and
``.docx``,
split along their structure (headings, paragraphs) into chunks of a token budget with overlap.

A chunk never crosses a heading: it keeps the path of headings above it (``Returns > Refunds``)
for the sources line, and is embedded with that path in front, which is what a question names
more often than the paragraph does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from bot.errors import KnowledgeError

#: Suffixes ``fmbot kb add`` reads.
SUFFIXES = (".md", ".markdown", ".txt", ".rst", ".html", ".htm", ".pdf", ".docx")
#: Tokens per chunk and carried over between neighbours. e5 reads at most 512 tokens; shorter
#: chunks make sharper vectors and shorter prompts.
CHUNK_TOKENS = 220
OVERLAP_TOKENS = 40
#: The budget's estimate: about 4 characters a token in English, fewer in Russian; e5's own
#: tokenizer would be exact but ties chunking to one embedder.
CHARS_PER_TOKEN = 3.5

HEADING_SEPARATOR = " > "


@dataclass(frozen=True, slots=True)
class Block:
    """A paragraph and the headings it sits under."""

    headings: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    heading: str  # "Returns > Refunds", "" when the document has no headings
    text: str

    @property
    def embedded_text(self) -> str:
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def tokens(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def read_blocks(path: Path) -> list[Block]:
    """The paragraphs of the file at ``path``; KnowledgeError (with the reason) when it cannot be
    read."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise KnowledgeError(f"not a supported type (use {', '.join(SUFFIXES)})")
    if suffix == ".pdf":
        return _pdf_blocks(path)
    if suffix == ".docx":
        return _docx_blocks(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KnowledgeError(f"cannot be read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KnowledgeError("is not UTF-8 text") from None
    if suffix in (".md", ".markdown"):
        return _markdown_blocks(text)
    if suffix == ".rst":
        return _rst_blocks(text)
    if suffix in (".html", ".htm"):
        return _html_blocks(text)
    return _paragraph_blocks((), text)


def chunk_blocks(
    blocks: list[Block], budget: int = CHUNK_TOKENS, overlap: int = OVERLAP_TOKENS
) -> list[Chunk]:
    """Paragraphs of one heading path joined up to ``budget`` tokens; a paragraph too long is cut
    at sentences (then words). A chunk after the first of its section starts with the last
    ``overlap`` tokens of the one before, so an answer across the cut is found whole."""
    chunks: list[Chunk] = []
    for headings, pieces in _sections(blocks, budget):
        heading = HEADING_SEPARATOR.join(headings)
        current: list[str] = []
        for piece in pieces:
            if current and tokens(" ".join([*current, piece])) > budget:
                chunks.append(Chunk(heading, "\n\n".join(current)))
                current = _tail(current[-1], overlap)
            current.append(piece)
        if current:
            chunks.append(Chunk(heading, "\n\n".join(current)))
    return chunks


def _sections(blocks: list[Block], budget: int) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    headings: tuple[str, ...] | None = None
    pieces: list[str] = []
    for block in blocks:
        if block.headings != headings:
            if pieces and headings is not None:
                yield headings, pieces
            headings, pieces = block.headings, []
        pieces.extend(_fit(block.text, budget))
    if pieces and headings is not None:
        yield headings, pieces


_SENTENCE_END = re.compile(r"(?<=[.!?…;:])\s+")


def _fit(text: str, budget: int) -> list[str]:
    """``text`` in pieces of at most ``budget`` tokens: whole sentences where they fit."""
    if tokens(text) <= budget:
        return [text]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        for part in _words_within(sentence, budget):
            joined = f"{current} {part}".strip()
            if current and tokens(joined) > budget:
                pieces.append(current)
                current = part
            else:
                current = joined
    if current:
        pieces.append(current)
    return pieces


def _words_within(sentence: str, budget: int) -> list[str]:
    if tokens(sentence) <= budget:
        return [sentence]
    parts: list[str] = []
    current: list[str] = []
    for word in sentence.split():
        if current and tokens(" ".join([*current, word])) > budget:
            parts.append(" ".join(current))
            current = []
        current.append(word[: int(budget * CHARS_PER_TOKEN)])  # a "word" of a page's length
    if current:
        parts.append(" ".join(current))
    return parts


def _tail(text: str, overlap: int) -> list[str]:
    """The last sentences of ``text`` within ``overlap`` tokens (none if the last is longer)."""
    kept: list[str] = []
    for sentence in reversed(_SENTENCE_END.split(text)):
        if tokens(" ".join([sentence, *kept])) > overlap:
            break
        kept.insert(0, sentence)
    return [" ".join(kept)] if kept else []


def _paragraph_blocks(headings: tuple[str, ...], text: str) -> list[Block]:
    return [Block(headings, " ".join(p.split())) for p in re.split(r"\n\s*\n", text) if p.strip()]


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")
_SETEXT = re.compile(r"^(=+|-+)\s*$")


def _markdown_blocks(text: str) -> list[Block]:
    """ATX (``## Title``) and setext (``Title`` over ``====``) headings; fenced code stays one
    paragraph with its lines."""
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    paragraph: list[str] = []
    fence: list[str] | None = None

    def headings() -> tuple[str, ...]:
        return tuple(title for _, title in stack)

    def flush() -> None:
        if paragraph:
            text = _inline_markdown("\n".join(paragraph))
            blocks.extend(_paragraph_blocks(headings(), text))
            paragraph.clear()

    def open_heading(level: int, title: str) -> None:
        flush()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, _inline_markdown(title)))

    for line in text.splitlines():
        if fence is not None:
            fence.append(line)
            if _MD_FENCE.match(line):
                blocks.append(Block(headings(), "\n".join(fence)))
                fence = None
            continue
        if _MD_FENCE.match(line):
            flush()
            fence = [line]
            continue
        match = _MD_HEADING.match(line)
        if match:
            open_heading(len(match[1]), match[2])
        elif _SETEXT.match(line) and len(paragraph) == 1:
            title = paragraph.pop()
            open_heading(1 if line.lstrip().startswith("=") else 2, title)
        elif not line.strip():
            flush()
        else:
            paragraph.append(line)
    flush()
    if fence:
        blocks.append(Block(headings(), "\n".join(fence)))
    return blocks


def _inline_markdown(text: str) -> str:
    """Links as their words, emphasis without its marks: what a reader sees."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"(\*\*|__|\*|`)(\S(?:.*?\S)?)\1", r"\2", text)


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>:._])\1{2,}\s*$")


def _rst_blocks(text: str) -> list[Block]:
    """Section titles are a line underlined (and maybe overlined) with punctuation; levels go
    by the order the underline characters first appear, as reStructuredText defines."""
    lines = text.splitlines()
    levels: list[str] = []
    stack: list[tuple[int, str]] = []
    blocks: list[Block] = []
    paragraph: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        following = lines[i + 1] if i + 1 < len(lines) else ""
        underline = _RST_UNDERLINE.match(following)
        is_title = line.strip() and not _RST_UNDERLINE.match(line)
        if is_title and underline and len(following.rstrip()) >= len(line.strip()):
            blocks.extend(_paragraph_blocks(tuple(t for _, t in stack), "\n".join(paragraph)))
            paragraph = []
            char = underline[1]
            if char not in levels:
                levels.append(char)
            level = levels.index(char)
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, line.strip()))
            i += 2
            continue
        if not _RST_UNDERLINE.match(line):  # overlines are dropped
            paragraph.append(line)
        i += 1
    blocks.extend(_paragraph_blocks(tuple(t for _, t in stack), "\n".join(paragraph)))
    return blocks


class _HTMLText(HTMLParser):
    """Visible text only: no scripts, styles or markup; ``h1``..``h6`` are headings, block
    elements end paragraphs."""

    SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe"})
    BLOCKS = frozenset(
        {"p", "div", "li", "br", "tr", "section", "article", "blockquote", "pre", "table",
         "ul", "ol", "dl", "dt", "dd", "header", "footer", "main", "nav", "aside", "hr",
         "figure", "figcaption", "form", "td", "th"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._stack: list[tuple[int, str]] = []
        self._text: list[str] = []
        self._skipping = 0
        self._heading: int | None = None

    def _flush(self) -> None:
        text = " ".join("".join(self._text).split())
        self._text = []
        if not text:
            return
        if self._heading is not None:
            while self._stack and self._stack[-1][0] >= self._heading:
                self._stack.pop()
            self._stack.append((self._heading, text))
        else:
            self.blocks.append(Block(tuple(t for _, t in self._stack), text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._heading = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._heading = None
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def _html_blocks(text: str) -> list[Block]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    return parser.blocks


def _pdf_blocks(path: Path) -> list[Block]:
    """The text layer, page by page (the heading path is the page: a PDF's outline is rarely
    kept well enough to trust)."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    # pypdf logs each flaw it works around; a file it cannot read is reported once, by us.
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except OSError as exc:
        raise KnowledgeError(f"cannot be read ({exc.strerror or exc})") from exc
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise KnowledgeError("is not a PDF pypdf can read (damaged or encrypted?)") from exc
    blocks: list[Block] = []
    for number, page in enumerate(pages, 1):
        blocks.extend(_paragraph_blocks((f"page {number}",), page))
    return blocks


_DOCX_HEADING = re.compile(r"^(?:Heading|Заголовок)\s*(\d)$|^Title$")


def _docx_blocks(path: Path) -> list[Block]:
    """Paragraphs of a Word document; its heading styles (``Heading 1``..) are the headings."""
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except OSError as exc:
        raise KnowledgeError(f"cannot be read ({exc.strerror or exc})") from exc
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise KnowledgeError("is not a Word document python-docx can read") from exc
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    for paragraph in document.paragraphs:
        text = " ".join(paragraph.text.split())
        if not text:
            continue
        style = paragraph.style.name if paragraph.style is not None else ""
        match = _DOCX_HEADING.match(style or "")
        if match:
            level = int(match[1]) if match[1] else 0
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
        else:
            blocks.append(Block(tuple(t for _, t in stack), text))
    return blocks
