"""Small documents for knowledge-base tests, written by the test: Markdown, HTML, PDF."""

from __future__ import annotations

from pathlib import Path

from bot.kb.embedders import LocalE5Embedder
from bot.kb.index import KnowledgeBase

WARRANTY_MD = """\
# Warranty

Every product comes with a **two-year** warranty from the date of purchase.

## Claims

To claim, send the receipt and a photo of the fault to support@example.com.
We answer within two working days.

# Delivery

Parcels are delivered in three to five working days across Europe.
"""

RETURNS_HTML = """\
<html><head><title>Returns</title><style>p { color: red }</style>
<script>var hidden = "script text";</script></head>
<body><h1>Returns</h1><p>You can return an item within <b>thirty days</b> for a full refund.</p>
<script>alert("more script text")</script></body></html>
"""

PAYMENT_RU_TXT = """\
Оплата принимается банковской картой, наличными или переводом через СБП.

Чек приходит на электронную почту сразу после оплаты.
"""

DELIVERY_RU_MD = """\
# Доставка

Курьер привозит заказ по Москве на следующий день после оформления.
"""


def make_pdf(pages: list[str]) -> bytes:
    """A valid PDF whose pages carry ``pages`` as a text layer (Helvetica, one line each)."""
    objects: list[bytes] = []
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def write_russian_docs(folder: Path) -> Path:
    """Russian documents, for English questions. (A knowledge base mixing languages ranks a
    passage in the question's language higher with e5-small: one language per base is best.)"""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "payment.txt").write_text(PAYMENT_RU_TXT, encoding="utf-8")
    (folder / "delivery.md").write_text(DELIVERY_RU_MD, encoding="utf-8")
    return folder


def write_shop_docs(folder: Path) -> Path:
    """A small shop's documents in English: Markdown, HTML and a PDF."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "warranty.md").write_text(WARRANTY_MD, encoding="utf-8")
    (folder / "returns.html").write_text(RETURNS_HTML, encoding="utf-8")
    (folder / "care.pdf").write_bytes(
        make_pdf(["Clean the kettle with vinegar once a month.", "Never put it in a dishwasher."])
    )
    return folder


async def build_shop_kb(root: Path, name: str = "shop") -> Path:
    """A knowledge base ``name`` of the shop's documents (real e5) in ``root/kb``; that folder."""
    kb = await KnowledgeBase.open(root / "kb", name, create=True)
    try:
        await kb.add([write_shop_docs(root / "docs")], LocalE5Embedder())
    finally:
        await kb.aclose()
    return root / "kb"
