"""Corpus readers: every format on small files written here, malformed input, and slices of real data."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lvmkit.corpus import (
    Article,
    Paragraph,
    ReadStats,
    corpus_source_hash,
    detect_format,
    embedded_corpus_path,
    read_corpus,
    source_files,
)
from lvmkit.corpus.readers import parquet as parquet_reader
from lvmkit.corpus.readers.wikitext import detokenize, parse_header
from lvmkit.errors import ConfigError, CorpusError

ENWIKI = Path(__file__).resolve().parents[1].parent / "shared/data/enwiki2015"
COMPRESS = {
    "": lambda p, b: p.write_bytes(b),
    ".bz2": bz2.compress,
    ".gz": gzip.compress,
    ".xz": lzma.compress,
}


def write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path``, compressed according to its suffix (.bz2 / .gz / .xz)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".bz2", ".gz", ".xz"):
        raw = COMPRESS[path.suffix](raw)
    path.write_bytes(raw)
    return path


def doc(doc_id: str, title: str, *body: str) -> str:
    return (
        f'<doc id="{doc_id}" url="http://en.wikipedia.org/wiki?curid={doc_id}" title="{title}">\n'
        + "\n".join(body)
        + "\n</doc>\n"
    )


WIKI = doc(
    "1",
    "Alpha &amp; Omega",
    "Alpha & Omega",
    "",
    "Alpha is the first letter.  It starts things.",
    "History.",
    "Origins.",
    "Alpha was used in Greece.",
    "He was a Roman Catholic.",  # a short real paragraph: text, not a heading
    "Later use.",
    "It is still used.",
    "References.",  # a heading with nothing after it: dropped
) + doc("2", "Beta", "Beta", "Beta is second.")
WIKI_EXPECTED = [
    Article(
        "1",
        "Alpha & Omega",
        (
            Paragraph("Alpha is the first letter. It starts things.", None),
            Paragraph("Alpha was used in Greece.", "Origins"),
            Paragraph("He was a Roman Catholic.", "Origins"),
            Paragraph("It is still used.", "Later use"),
        ),
    ),
    Article("2", "Beta", (Paragraph("Beta is second."),)),
]


# ----------------------------------------------------------------------------------------- wikiextractor
@pytest.mark.parametrize("suffix", ["", ".bz2", ".gz", ".xz"])
def test_wikiextractor_file_any_compression(tmp_path, suffix):
    path = write(tmp_path / f"wiki_00{suffix}", WIKI)
    stats = ReadStats()
    assert detect_format(path) == "wikiextractor"
    assert list(read_corpus(path, stats=stats)) == WIKI_EXPECTED
    assert (stats.files, stats.articles, dict(stats.counts)) == (1, 2, {})


def test_wikiextractor_directory_order_and_limit(tmp_path):
    write(tmp_path / "AB/wiki_00.gz", doc("30", "C", "C", "Gamma is third."))
    write(tmp_path / "AA/wiki_01.bz2", doc("20", "B", "B", "Beta is second."))
    write(tmp_path / "AA/wiki_00", doc("10", "A", "A", "Alpha is first."))
    write(tmp_path / "SOURCE.md", "# not a corpus file\n")
    files, root = source_files(tmp_path)
    assert [f.relative_to(root).as_posix() for f in files] == [
        "AA/wiki_00",
        "AA/wiki_01.bz2",
        "AB/wiki_00.gz",
    ]
    assert detect_format(tmp_path) == "wikiextractor"
    assert [a.id for a in read_corpus(tmp_path)] == ["10", "20", "30"]
    stats = ReadStats()
    assert [a.id for a in read_corpus(tmp_path, limit_articles=2, stats=stats)] == ["10", "20"]
    assert stats.articles == 2 and stats.files == 2
    assert list(read_corpus(tmp_path, limit_articles=0)) == []


def test_wikiextractor_round_trip_matches_generated_articles(tmp_path):
    """Articles written from a known structure come back exactly, headings as metadata."""
    expected, text = [], ""
    for i in range(12):
        paragraphs, body = [], [f"Title {i}"]
        for j in range(i % 4 + 1):
            if j % 2:
                body.append(f"Section {j}.")
            heading = f"Section {j}" if j % 2 else (paragraphs[-1].heading if paragraphs else None)
            sentence = f"Paragraph {j} of article {i} has enough words to never look like a heading at all."
            body.append(sentence)
            paragraphs.append(Paragraph(sentence, heading))
        expected.append(Article(str(100 + i), f"Title {i}", tuple(paragraphs)))
        text += doc(str(100 + i), f"Title {i}", *body)
    assert list(read_corpus(write(tmp_path / "wiki_00.xz", text))) == expected


def test_wikiextractor_bad_utf8_is_replaced_and_counted(tmp_path):
    raw = doc("3", "Gamma", "Gamma", "Gamma has a bad byte XX here.").encode().replace(b"XX", b"\xff\xfe")
    path = write(tmp_path / "wiki_00.bz2", raw)
    stats = ReadStats()
    (article,) = read_corpus(path, stats=stats)
    assert article.paragraphs[0].text == "Gamma has a bad byte \ufffd\ufffd here."
    assert stats.counts["bad_utf8"] == 1 and stats.repaired == {"bad_utf8": 1} and stats.skipped == {}
    assert (stats.examples[0].file, stats.examples[0].line) == (str(path), 3)


def test_wikiextractor_html_tags_are_removed_and_counted(tmp_path):
    text = doc(
        "8",
        "Delta",
        "Delta",  # line 2
        "Delta is a letter with enough words to be a paragraph.",
        "</dl>",  # line 4: only a tag, dropped
        "<poem>Q. text</poem>",
        '<span id="x" /> Text after an anchor is <BR/>broken.',
        "Maths: a < b and c > d, x<3, y <- z, 2 < x > 1 and the grapheme <r> stay.",
        "<onlyinclude></onlyinclude>",  # line 8
        'Cited.<ref name="A b"></ref> Next sentence.',
        "It is 14<b/> to <b/>16 hands high.",  # a convert template's remains
    )
    stats = ReadStats()
    (article,) = read_corpus(write(tmp_path / "wiki_00", text), stats=stats)
    assert [p.text for p in article.paragraphs] == [
        "Delta is a letter with enough words to be a paragraph.",
        "Q. text",
        "Text after an anchor is broken.",
        "Maths: a < b and c > d, x<3, y <- z, 2 < x > 1 and the grapheme <r> stay.",
        "Cited. Next sentence.",
        "It is 14 to 16 hands high.",
    ]
    assert stats.repaired == {"html_tags": 4}
    assert stats.skipped == {"markup_only_line": 2}
    assert [(i.reason, i.line) for i in stats.examples] == [
        ("markup_only_line", 4),
        ("html_tags", 5),
        ("html_tags", 6),
        ("markup_only_line", 8),
        ("html_tags", 9),
        ("html_tags", 10),
    ]
    assert stats.examples[0].detail == "</dl>"


def test_wikiextractor_malformed_documents_are_skipped_and_counted(tmp_path, caplog):
    text = (
        "stray text before any document\n"
        + doc("4", "Empty", "Empty")  # only the title line: an empty article
        + '<doc id="5" url="u" title="Unclosed">\nUnclosed\nThis text never gets a closing tag.\n'
        + doc("6", "Good", "Good", "Good text.")  # looks like a heading, but is all the article has
        + '<doc id="7" url="u" title="Tail">\nTail text at the end of the file.\n'
    )
    path = write(tmp_path / "wiki_00", text)
    stats = ReadStats()
    assert list(read_corpus(path, stats=stats)) == [Article("6", "Good", (Paragraph("Good text."),))]
    assert stats.skipped == {"empty_article": 1, "text_outside_doc": 1, "unclosed_doc": 2}
    where = {(i.reason, i.line) for i in stats.examples}
    assert {("text_outside_doc", 1), ("empty_article", 2), ("unclosed_doc", 5), ("unclosed_doc", 12)} <= where
    assert all(i.file == str(path) for i in stats.examples)
    summary = stats.summary()
    assert "\n" not in summary and "read 1 articles from 1 file" in summary and "2 unclosed_doc" in summary
    assert "unclosed_doc" in caplog.text  # problems are logged even without a ReadStats


def test_truncated_compressed_file_is_a_corpus_error(tmp_path):
    path = tmp_path / "wiki_00.bz2"
    path.write_bytes(bz2.compress((WIKI * 50).encode())[:200])
    with pytest.raises(CorpusError, match="wiki_00.bz2"):
        list(read_corpus(path))


# ----------------------------------------------------------------------------------------- errors
def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CorpusError, match="nope"):
        read_corpus(missing)  # raised at call time, before iteration
    with pytest.raises(CorpusError, match="nope"):
        corpus_source_hash(missing)


def test_undetectable_format_names_path_and_formats(tmp_path):
    path = write(tmp_path / "data.bin", "just some words\nwithout any structure\n")
    with pytest.raises(CorpusError) as e:
        read_corpus(path)
    assert "data.bin" in str(e.value) and "wikiextractor" in str(e.value) and "parquet" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(tmp_path / "empty")


@pytest.mark.parametrize("bad", [{"format": "csv"}, {"limit_articles": -1}])
def test_bad_arguments_are_config_errors(tmp_path, bad):
    path = write(tmp_path / "wiki_00", WIKI)
    with pytest.raises(ConfigError, match="csv|--limit-articles") as e:  # the CLI flag
        read_corpus(path, **bad)
    if "format" in bad:
        assert "jsonl" in str(e.value) and "embedded" in str(e.value)


# ----------------------------------------------------------------------------------------- jsonl / json
RECORDS = [
    {
        "id": 7,
        "title": "Seven",
        "text": "Seven is a number.\n\nHistory\n\nIt was known early.\nIt is prime.",
        "label": "math",
    },
    {"id": "8", "title": "Eight", "text": "Eight is the National Book\nand more.", "topic": "Math"},
    {"title": "No id", "text": "Text without an id."},
]
RECORDS_EXPECTED = [
    Article(
        "7",
        "Seven",
        (
            Paragraph("Seven is a number."),
            Paragraph("It was known early.", "History"),
            Paragraph("It is prime.", "History"),
        ),
        "math",
    ),
    Article("8", "Eight", (Paragraph("Eight is the National Book and more."),), "Math"),  # a soft wrap joined
    Article("No id", "No id", (Paragraph("Text without an id."),)),
]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.json"])
def test_jsonl_records(tmp_path, name):
    path = write(tmp_path / name, "\n".join(json.dumps(r) for r in RECORDS) + "\n")
    assert detect_format(path) == "jsonl"
    assert list(read_corpus(path)) == RECORDS_EXPECTED


def test_jsonl_bad_lines_are_counted(tmp_path):
    lines = [
        json.dumps(RECORDS[0]),
        "{not json",
        json.dumps({"id": 1, "title": "no text"}),
        json.dumps({"id": 2, "text": " \n "}),
    ]
    path = write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")
    stats = ReadStats()
    assert list(read_corpus(path, stats=stats)) == RECORDS_EXPECTED[:1]
    assert stats.skipped == {"bad_record": 2, "empty_article": 1}
    assert [(i.reason, i.line) for i in stats.examples] == [
        ("bad_record", 2),
        ("bad_record", 3),
        ("empty_article", 4),
    ]


@pytest.mark.parametrize("layout", ["list", "dict"])
def test_json_documents(tmp_path, layout):
    body = RECORDS if layout == "list" else {f"key{i}": r for i, r in enumerate(RECORDS)}
    path = write(tmp_path / "c.json", json.dumps(body, indent=1))
    articles = list(read_corpus(path))
    expected_last_id = "No id" if layout == "list" else "key2"  # a dict key stands in for a missing id
    assert [a.id for a in articles] == ["7", "8", expected_last_id]
    assert [a.paragraphs for a in articles] == [a.paragraphs for a in RECORDS_EXPECTED]


def test_jsonl_directory_of_shards(tmp_path):
    write(tmp_path / "part-1.jsonl", json.dumps(RECORDS[1]) + "\n")
    write(tmp_path / "part-0.jsonl.xz", json.dumps(RECORDS[0]) + "\n")
    assert detect_format(tmp_path) == "jsonl"
    assert [a.id for a in read_corpus(tmp_path)] == ["7", "8"]


# ----------------------------------------------------------------------------------------- parquet
def test_parquet_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_reader, "BATCH_ROWS", 2)
    rows = [
        {
            "id": str(r.get("id", r["title"])),
            "title": r["title"],
            "text": r["text"],
            "label": r.get("label") or r.get("topic"),
        }
        for r in RECORDS
    ]
    rows.append({"id": "9", "title": "Null", "text": None, "label": None})
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    stats = ReadStats()
    assert detect_format(path) == "parquet"
    assert list(read_corpus(path, stats=stats)) == RECORDS_EXPECTED
    assert stats.skipped == {"bad_record": 1} and stats.examples[0].line == 4


def test_parquet_without_text_column(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["b"]}), path)
    with pytest.raises(CorpusError, match="x.parquet.*'body'"):
        list(read_corpus(path))


# ----------------------------------------------------------------------------------------- wikitext
WIKITEXT_LINES = [
    "",
    "= Alpha =",
    "",
    "Alpha is first , e.g. in Greek . It has 1 @,@ 000 uses ( roughly ) .",
    "",
    "= = History = =",
    "",
    "It was used in the 5th @-@ century . It 's old .",
    "",
    "= = = Late use = = =",
    "",
    "Still used today .",
    "",
    "= Beta =",
    "",
    "Beta is second .",
]
WIKITEXT = "".join(f" {line} \n" for line in WIKITEXT_LINES)  # the raw files pad every line with spaces


def test_wikitext(tmp_path):
    path = write(tmp_path / "wiki.train.raw", WIKITEXT)
    assert detect_format(path) == "wikitext"
    assert list(read_corpus(path)) == [
        Article(
            "wiki.train.raw:2",
            "Alpha",
            (
                Paragraph("Alpha is first, e.g. in Greek. It has 1,000 uses (roughly)."),
                Paragraph("It was used in the 5th-century. It's old.", "History"),
                Paragraph("Still used today.", "Late use"),
            ),
        ),
        Article("wiki.train.raw:14", "Beta", (Paragraph("Beta is second."),)),
    ]


def test_wikitext_helpers():
    assert parse_header(" = = = Late use = = = ") == (3, "Late use")
    assert parse_header(" = Title = ") == (1, "Title")
    assert parse_header(" = = unbalanced = ") is None
    assert parse_header("x = y") is None
    assert detokenize("3 @.@ 5 % , don 't") == "3.5%, don't"


# ----------------------------------------------------------------------------------------- textdir
def test_textdir(tmp_path):
    write(
        tmp_path / "a.txt",
        "A Title Line\n\nFirst paragraph wraps\nonto a second line.\n\nSection\n\nMore text here.\n",
    )
    write(tmp_path / "sub/b.txt.gz", "This first paragraph is a sentence, so it is not a title.\n\nSecond.\n")
    write(tmp_path / "c.txt", "\n  \n")
    write(tmp_path / ".hidden.txt", "Hidden.\n")
    stats = ReadStats()
    assert detect_format(tmp_path) == "textdir"
    assert list(read_corpus(tmp_path, stats=stats)) == [
        Article(
            "a.txt",
            "A Title Line",
            (Paragraph("First paragraph wraps onto a second line."), Paragraph("More text here.", "Section")),
        ),
        Article(
            "sub/b.txt.gz",
            "b",
            (Paragraph("This first paragraph is a sentence, so it is not a title."), Paragraph("Second.")),
        ),
    ]
    assert stats.skipped == {"empty_article": 1} and stats.examples[0].file.endswith("c.txt")
    assert [a.id for a in read_corpus(tmp_path / "a.txt", format="textdir")] == ["a.txt"]


# ----------------------------------------------------------------------------------------- source hash
def test_corpus_source_hash_is_content(tmp_path):
    a = tmp_path / "a"
    write(a / "AA/wiki_00.bz2", WIKI)
    write(a / "AA/wiki_01", doc("9", "Z", "Z", "Zeta."))
    h = corpus_source_hash(a)
    assert len(h) == 64 and h == corpus_source_hash(a, format="wikiextractor")
    os.utime(a / "AA/wiki_01", (1, 1))  # touching a file is not a content change
    b = tmp_path / "copy"
    (b / "AA").mkdir(parents=True)
    for f in ("wiki_00.bz2", "wiki_01"):
        (b / "AA" / f).write_bytes((a / "AA" / f).read_bytes())
    assert corpus_source_hash(a) == corpus_source_hash(b) == h
    (b / "AA/wiki_01").write_bytes((a / "AA/wiki_01").read_bytes().replace(b"Zeta", b"Zetb"))
    assert corpus_source_hash(b) != h
    (b / "AA/wiki_01").rename(b / "AA/wiki_02")
    assert corpus_source_hash(b) != h


# ----------------------------------------------------------------------------------------- real data
def _embedded_or_skip() -> Path:
    try:
        return embedded_corpus_path()
    except CorpusError as e:
        pytest.skip(str(e))


def test_embedded_corpus():
    path = _embedded_or_skip()
    raw = json.loads(path.read_text(encoding="utf-8"))
    stats = ReadStats()
    articles = list(read_corpus("embedded", stats=stats))
    with_text = [k for k, v in raw.items() if v.get("extract", "").strip()]
    assert len(articles) == len(with_text) == 10_033
    assert [a.id for a in articles] == with_text  # file order
    assert all(a.label == raw[a.id]["topic"] and a.label for a in articles)
    assert len({a.label for a in articles}) == 12
    for a in articles[::97]:  # nothing lost: the paragraphs re-join to the extract (no headings in leads)
        assert " ".join(p.text for p in a.paragraphs) == " ".join(raw[a.id]["extract"].split())
    assert detect_format("embedded") == "embedded" and stats.skipped == {}
    assert [a.id for a in read_corpus(path, format="embedded", limit_articles=3)] == with_text[:3]


# The only tags in the first 20 articles of AA/wiki_00: five "</dl>" lines and one <poem>...</poem>.
RAW_TAGS = re.compile(r"</?(?:dl|poem)>")


def raw_docs(path: Path, n_docs: int) -> list[tuple[str, list[str]]]:
    """``(id, body lines)`` of the first ``n_docs`` documents, straight from the file, whitespace-normalised."""
    docs: list[tuple[str, list[str]]] = []
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("<doc "):
                if len(docs) == n_docs:
                    break
                docs.append((line.split('"')[1], []))
            elif not line.startswith("</doc>"):
                docs[-1][1].append(" ".join(line.split()))
    return docs


@pytest.mark.enwiki
def test_enwiki_slice():
    path = ENWIKI / "AA/wiki_00.bz2"
    if not path.exists():
        pytest.skip(f"{path} not present")
    raw = raw_docs(path, 20)
    stats = ReadStats()
    articles = list(read_corpus(path, limit_articles=20, stats=stats))
    assert [a.id for a in articles] == [i for i, _ in raw]
    anarchism = articles[0]
    assert anarchism.title == "Anarchism"
    assert anarchism.paragraphs[0].text.startswith(
        "Anarchism is a political philosophy"
    )  # title line dropped
    assert anarchism.paragraphs[0].heading is None
    etym = [p for p in anarchism.paragraphs if p.heading == "Etymology and terminology"]
    assert etym and etym[0].text.startswith('The term "anarchism" is a compound word')
    headings = {p.heading for a in articles[:5] for p in a.paragraphs if p.heading}
    assert {"History", "Origins"} <= headings
    assert not any(p.text.rstrip(".") in headings for a in articles[:5] for p in a.paragraphs)
    # against the raw lines: the paragraphs are the body lines in order, with the tags removed, minus the
    # title line, minus lines that were only tags, minus lines shaped like WikiExtractor headings (short,
    # ending in "."), and nothing else
    tagged = tag_only = 0
    for article, (_, lines) in zip(articles, raw, strict=True):
        body = []
        for line in lines:
            clean = " ".join(RAW_TAGS.sub(" ", line).split())
            assert not re.search(r"</?[A-Za-z]", clean), clean  # RAW_TAGS names every tag in the slice
            if clean != line:
                tagged += bool(clean)
                tag_only += not clean
            if clean:
                body.append(clean)
        assert body[0] == article.title
        kept = iter(p.text for p in article.paragraphs)
        want = next(kept)
        dropped = []
        for line in body[1:]:
            if line == want:
                want = next(kept, None)
            else:
                dropped.append(line)
        assert want is None  # every paragraph found, in order
        assert all(x.endswith(".") and len(x.split()) <= 10 for x in dropped)
        assert {x[:-1] for x in dropped} >= {p.heading for p in article.paragraphs if p.heading}
    poem = [p.text for p in articles[18].paragraphs if "Philosophers speak" in p.text]
    assert poem and poem[0].startswith("Q. When the Philosophers speak")
    assert (tagged, tag_only) == (2, 5)
    assert stats.repaired == {"html_tags": tagged}
    assert stats.skipped == {"markup_only_line": tag_only} and stats.articles == 20
