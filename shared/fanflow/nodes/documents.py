"""Text from documents, as Dify's document-extractor node reads them (pure: bytes → text).

By extension first (``.pdf``), else by MIME type, as Dify does:

- txt, md, markdown, mdx, html, htm, xml, vtt, code files: the bytes as UTF-8 (undecodable
  bytes dropped), markup kept as it is;
- json: re-dumped with an indent of 2 (non-ASCII kept); yaml: re-dumped;
- csv: a markdown table, the first row as its header;
- pdf: the text of each page in order (pypdf; Dify uses pdfium, whose spacing can differ);
- docx: paragraphs and tables in document order, a table as a markdown table with ``<br>``
  for line breaks inside cells (python-docx).

Other types (doc, xlsx, pptx, epub, eml, ...) raise `UnsupportedDocument` naming the type.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = ["DocumentError", "UnsupportedDocument", "document_type", "extract_text"]

_PLAIN = frozenset(
    {".txt", ".markdown", ".md", ".mdx", ".html", ".htm", ".xml", ".vtt", ".log", ".rst"}
    | {".py", ".js", ".ts", ".java", ".c", ".h", ".cpp", ".go", ".rs", ".sh", ".sql", ".css"}
)
_MIME_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/htm": ".html",
    "text/markdown": ".md",
    "text/xml": ".xml",
    "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "text/csv": ".csv",
    "application/json": ".json",
    "application/x-yaml": ".yaml",
    "text/yaml": ".yaml",
    "text/vtt": ".vtt",
}


class DocumentError(ValueError):
    """A document that cannot be read; the text says why."""


class UnsupportedDocument(DocumentError):
    """A type fanflow's extractor does not read."""


def document_type(file: Mapping[str, Any]) -> str:
    """The file's extension (``.pdf``): its `extension`, else its name's or URL's suffix,
    else from its MIME type. Raises `UnsupportedDocument` when none says."""
    extension = str(file.get("extension") or "").lower()
    if extension:
        return extension if extension.startswith(".") else f".{extension}"
    for key in ("filename", "name", "remote_url", "url"):
        value = file.get(key)
        if isinstance(value, str) and value:
            path = urlsplit(value).path if key.endswith("url") else value
            tail = path.rsplit("/", 1)[-1]
            if "." in tail:
                return "." + tail.rsplit(".", 1)[-1].lower()
    mime = str(file.get("mime_type") or "").split(";")[0].strip().lower()
    if mime in _MIME_EXTENSIONS:
        return _MIME_EXTENSIONS[mime]
    if mime:
        raise UnsupportedDocument(f"Unsupported MIME type: {mime}")
    raise UnsupportedDocument(
        "Unable to determine file type: MIME type or file extension is missing"
    )


def extract_text(content: bytes, extension: str) -> str:
    """The text of a document of type `extension`."""
    if extension in _PLAIN:
        return content.decode("utf-8", "ignore")
    reader = _READERS.get(extension)
    if reader is None:
        raise UnsupportedDocument(f"Unsupported Extension Type: {extension}")
    return reader(content)


def _json(content: bytes) -> str:
    try:
        return json.dumps(
            json.loads(content.decode("utf-8", "ignore")), indent=2, ensure_ascii=False
        )
    except ValueError as exc:
        raise DocumentError(f"Failed to decode or parse JSON file: {exc}") from exc


def _yaml(content: bytes) -> str:
    try:
        documents = list(yaml.safe_load_all(content.decode("utf-8", "ignore")))
        return yaml.safe_dump_all(documents, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError as exc:
        raise DocumentError(f"Failed to decode or parse YAML file: {exc}") from exc


def _csv(content: bytes) -> str:
    rows = list(csv.reader(io.StringIO(content.decode("utf-8", "ignore"))))
    if not rows:
        return ""
    lines = [_row(rows[0]), _row(["---"] * len(rows[0]))]
    lines.extend(_row(row) for row in rows[1:])
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _pdf(content: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(content))
        return "".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(f"Failed to extract text from PDF: {exc}") from exc


def _docx(content: bytes) -> str:
    import docx
    from docx.oxml.table import CT_Tbl
    from docx.oxml.text.paragraph import CT_P
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(content))
    except Exception as exc:  # python-docx raises zip, XML and its own errors
        raise DocumentError(f"Failed to extract text from DOCX: {exc}") from exc
    parts: list[str] = []
    for block in document.element.body:
        if isinstance(block, CT_P):
            parts.append(Paragraph(block, document).text)
        elif isinstance(block, CT_Tbl):
            table = Table(block, document)
            if any(cell.text.strip() for row in table.rows for cell in row.cells):
                parts.append(_docx_table(table))
    return "\n".join(parts)


def _docx_table(table: Any) -> str:
    rows = [[cell.text.replace("\n", "<br>") for cell in row.cells] for row in table.rows]
    lines = [_row(rows[0]), _row(["---"] * len(rows[0]))]
    lines.extend(_row(row) for row in rows[1:])
    return "\n".join(lines) + "\n"


_READERS: Mapping[str, Callable[[bytes], str]] = {
    ".json": _json,
    ".yaml": _yaml,
    ".yml": _yaml,
    ".csv": _csv,
    ".pdf": _pdf,
    ".docx": _docx,
}
