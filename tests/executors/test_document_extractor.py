"""The document-extractor node against documents generated here (pypdf, python-docx) and
served by a local HTTP server, as Dify shapes its outputs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import docx
import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from fanflow.executors import ExecutionContext, execute_task
from fanflow.messages import NodeTask, TaskResult
from fanflow.nodes.documents import extract_text
from fanflow.resilience.upstreams import Upstreams
from tests.tools.fakes import FakeService, Reply, fake_service


@pytest.fixture
def service() -> Iterator[FakeService]:
    with fake_service() as server:
        yield server


LOCAL = ExecutionContext(upstreams=Upstreams(), http_allow_list=("127.0.0.1",))


def pdf(*pages: str) -> bytes:
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    font_ref = writer._add_object(font)
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def word() -> bytes:
    document = docx.Document()
    document.add_paragraph("Lesson plan")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Week", "Topic"
    table.cell(1, 0).text, table.cell(1, 1).text = "1", "Fractions\nand decimals"
    document.add_paragraph("The end")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def remote(service: FakeService, name: str, body: bytes, **extra: Any) -> dict[str, Any]:
    service.route(
        "GET", f"/files/{name}", Reply(body=body, content_type="application/octet-stream")
    )
    return {
        "type": "document",
        "transfer_method": "remote_url",
        "remote_url": f"{service.url}/files/{name}",
        "filename": name,
        **extra,
    }


def task(value: Any, *, array: bool = False) -> NodeTask:
    return NodeTask(
        task_id="r/-/doc/0",
        run_id="r",
        node_id="doc",
        node_type="document-extractor",
        node_title="Extract",
        data={"variable_selector": ["start", "file"], "is_array_file": array},
        variables={"start.file": value},
    )


async def run(value: Any, ctx: ExecutionContext = LOCAL) -> TaskResult:
    return await execute_task(task(value), ctx)


async def test_pdf_and_docx(service: FakeService) -> None:
    result = await run(remote(service, "plan.pdf", pdf("Hello PDF", "Second page")))
    assert result.status == "succeeded", result.error
    assert "Hello PDF" in result.outputs["text"] and "Second page" in result.outputs["text"]
    assert result.outputs["text"].index("Hello") < result.outputs["text"].index("Second")
    result = await run(remote(service, "plan.docx", word()))
    assert result.status == "succeeded", result.error
    assert result.outputs["text"] == (
        "Lesson plan\n| Week | Topic |\n| --- | --- |\n| 1 | Fractions<br>and decimals |\n\nThe end"
    )


async def test_a_list_of_files_gives_a_list_of_texts(service: FakeService) -> None:
    files = [
        remote(service, "a.txt", "plain é".encode()),
        remote(service, "b.csv", b"name,age\nann,3\n"),
        remote(service, "c.json", json.dumps({"k": ["é"]}).encode()),
        remote(service, "d.md", b"# Title\n<b>kept</b>"),
    ]
    result = await run(files)
    assert result.status == "succeeded", result.error
    assert result.outputs["text"] == [
        "plain é",
        "| name | age |\n| --- | --- |\n| ann | 3 |",
        '{\n  "k": [\n    "é"\n  ]\n}',
        "# Title\n<b>kept</b>",
    ]
    assert (await run([])).outputs == {"text": []}


async def test_the_type_comes_from_the_extension_then_the_mime_type(service: FakeService) -> None:
    file = remote(service, "x", b"a: 1\n", extension=".yaml")
    assert (await run(file)).outputs["text"] == "a: 1\n"
    file = remote(service, "noext", b"<p>hi</p>", mime_type="text/html")
    file.pop("filename")
    file["remote_url"] = f"{service.url}/files/noext"
    assert (await run(file)).outputs["text"] == "<p>hi</p>"


async def test_unsupported_and_broken_documents_fail_naming_the_file(service: FakeService) -> None:
    result = await run(remote(service, "deck.pptx", b"PK"))
    assert (result.status, result.error_type) == ("failed", "UnsupportedFileTypeError")
    assert result.error == "doc (Extract): deck.pptx: Unsupported Extension Type: .pptx"
    result = await run(remote(service, "bad.pdf", b"not a pdf"))
    assert (result.status, result.error_type) == ("failed", "TextExtractionError")
    assert "bad.pdf: Failed to extract text from PDF" in (result.error or "")
    result = await run(remote(service, "bad.json", b"{nope"))
    assert result.error_type == "TextExtractionError"


async def test_a_missing_variable_or_a_non_file_fails() -> None:
    missing = await execute_task(
        NodeTask(
            task_id="t",
            run_id="r",
            node_id="doc",
            node_type="document-extractor",
            data={"variable_selector": ["start", "file"]},
        ),
        LOCAL,
    )
    assert missing.error == "doc: File variable not found for selector: ['start', 'file']"
    assert "is not a file or an array of files" in ((await run("text")).error or "")


async def test_an_uploaded_file_without_a_url_cannot_be_read() -> None:
    result = await run(
        {"transfer_method": "local_file", "upload_file_id": "u1", "extension": ".txt"}
    )
    assert (result.status, result.error_type) == ("failed", "FileDownloadError")
    assert "no URL to fetch the file from (transfer_method 'local_file')" in (result.error or "")


async def test_files_on_private_addresses_are_refused(service: FakeService) -> None:
    """The SSRF guard: a remote_url on loopback is refused unless the operator allows it."""
    result = await run(remote(service, "a.txt", b"secret"), ExecutionContext())
    assert (result.status, result.reason) == ("failed", "ssrf")
    assert service.seen == []


async def test_a_file_over_the_limit_is_refused(
    service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fanflow.executors import document_extractor

    monkeypatch.setattr(document_extractor, "MAX_FILE_BYTES", 10)
    result = await run(remote(service, "big.txt", b"x" * 11))
    assert result.status == "failed"
    assert "larger than 10 bytes" in (result.error or "")


def test_yaml_documents_and_empty_csv() -> None:
    assert extract_text(b"a: 1\n---\nb: [x]\n", ".yml") == "a: 1\n---\nb:\n- x\n"
    assert extract_text(b"", ".csv") == ""
