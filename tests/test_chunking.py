"""Sentence segmentation and chunking: examples, and properties checked against the article itself."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvmkit.corpus import Article, Paragraph, make_chunker, read_corpus, split_sentences
from lvmkit.corpus.chunking import pack_sentences
from lvmkit.corpus.segment import SEGMENTERS, sentence_spans
from lvmkit.errors import ConfigError

ENWIKI = Path(__file__).resolve().parents[1].parent / "shared/data/enwiki2015"
HAVE_PYSBD = importlib.util.find_spec("pysbd") is not None
segmenters = [
    s if s != "pysbd" or HAVE_PYSBD else pytest.param(s, marks=pytest.mark.skip("pysbd absent"))
    for s in SEGMENTERS
]


def norm(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------- segmentation
@pytest.mark.parametrize("segmenter", segmenters)
@pytest.mark.parametrize(
    "sentences",
    [
        ["Tolkien was born, e.g. in Africa.", "He moved to England."],
        ["J. R. R. Tolkien wrote it.", "It appeared in 1937."],
        ["He wrote many books.", "J. K. Rowling praised them."],
        ["Pi is about 3.14159 in value.", "It is irrational."],
        ["Dr. Smith met Mr. Jones at St. Paul's.", "They talked."],
        ["Born c. 1200 in York, he died young.", "Little else is known."],
        ["Why did it fail?", "Nobody knows!", "The inquiry continues."],
    ],
)
def test_split_sentences_handles_abbreviations(segmenter, sentences):
    assert split_sentences(" ".join(sentences), segmenter) == sentences


def test_fixes_repair_blingfire_errors():
    text = "The trial ended in 1921. Dr. Brown was acquitted."
    assert split_sentences(text, "blingfire", fix=False) == [
        "The trial ended in 1921.",
        "Dr.",
        "Brown was acquitted.",
    ]
    assert split_sentences(text, "blingfire") == ["The trial ended in 1921.", "Dr. Brown was acquitted."]


def test_unknown_segmenter():
    with pytest.raises(ConfigError, match="blingfire, pysbd"):
        split_sentences("A b.", segmenter="nltk")


WORDS = [
    "the",
    "Alpha",
    "e.g.",
    "Dr.",
    "U.S.",
    "J.",
    "3.14",
    "No.",
    "it",
    "(see",
    "x)",
    '"quoted."',
    "c.",
    "St.",
    "i.e.",
    "42",
    "é",
    "日本",
]
ENDS = [".", "?", "!", "", "...", '."']
sentence_st = st.builds(
    lambda words, end: " ".join(words) + end,
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=12),
    st.sampled_from(ENDS),
)
gap_st = st.sampled_from([" ", "  ", "\n", "\t", " \u00a0 "])
text_st = st.builds(
    lambda parts, gaps: "".join(p + g for p, g in zip(parts, gaps, strict=False)),
    st.lists(sentence_st, max_size=8),
    st.lists(gap_st, min_size=8, max_size=8),
)


@settings(max_examples=80, deadline=None)
@given(text=st.one_of(text_st, st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)))
def test_blingfire_sentences_cover_the_text_exactly(text):
    spans = sentence_spans(text, "blingfire")
    assert all(a < b and text[a:b] == text[a:b].strip() for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    # nothing lost, duplicated or reordered: the sentences re-join to the text up to whitespace
    assert " ".join(split_sentences(text, "blingfire")).split() == text.split()
    # without the fixes a cut may fall inside a word ("3." | "14"), but still no character is lost
    unfixed = split_sentences(text, "blingfire", fix=False)
    assert "".join("".join(unfixed).split()) == "".join(text.split())


@pytest.mark.skipif(not HAVE_PYSBD, reason="pysbd absent")
@settings(max_examples=25, deadline=None)
@given(text=text_st)
def test_pysbd_sentences_cover_the_text_exactly(text):
    assert " ".join(split_sentences(text, "pysbd")).split() == text.split()


# ----------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    "spec", ["words", "words:0", "words:-3", "words:x", "chars:5", "", "sentences", 64, None]
)
def test_bad_spec_names_allowed_specs(spec):
    with pytest.raises(ConfigError) as e:
        make_chunker(spec)
    assert "words:N" in str(e.value) or "positive integer" in str(e.value)


def test_config_describes_the_chunking():
    version = importlib.metadata.version("blingfire")
    assert make_chunker("words:64").config() == {
        "spec": "words:64",
        "strategy": "words",
        "max_words": 64,
        "max_chars": 2000,
        "segmenter": "blingfire",
        "segmenter_version": version,
        "sentence_fixes": True,
        "crosses_paragraphs": False,
    }
    assert make_chunker(" Sentence ").config()["spec"] == "sentence"
    para = make_chunker("paragraph").config()
    assert (para["strategy"], para["segmenter"], para["segmenter_version"]) == ("paragraph", None, None)
    with pytest.raises(ConfigError, match="segmenter"):
        make_chunker("sentence", segmenter="spacy")


def test_chunk_fields_headings_and_whitespace():
    article = Article(
        "a1",
        "Title",
        (Paragraph("First  one. Second\tone."), Paragraph("   "), Paragraph("Third one.", "History")),
        label="Arts",
    )
    chunks = make_chunker("sentence").chunk(article)
    assert [(c.chunk_index, c.paragraph_index, c.heading, c.text) for c in chunks] == [
        (0, 0, None, "First one."),
        (1, 0, None, "Second one."),
        (2, 2, "History", "Third one."),
    ]
    assert {(c.article_id, c.title, c.label) for c in chunks} == {("a1", "Title", "Arts")}
    assert [c.text for c in make_chunker("paragraph").chunk(article)] == [
        "First one. Second one.",
        "Third one.",
    ]
    assert [c.text for c in make_chunker("words:4").chunk(article)] == [
        "First one. Second one.",
        "Third one.",
    ]
    assert make_chunker("words:64").chunk(Article("e", "Empty", (Paragraph(" \n "),))) == []


def test_pack_sentences():
    s = ["a b", "c d e", "f g h i j k", "l"]
    assert pack_sentences(s, 5) == ["a b c d e", "f g h i j k", "l"]
    assert pack_sentences(s, 1) == s
    assert pack_sentences([], 3) == []


# ----------------------------------------------------------------------------------------- properties
paragraph_st = st.builds(Paragraph, text_st, st.one_of(st.none(), st.sampled_from(["History", "Life"])))
article_st = st.builds(
    Article,
    st.just("id"),
    st.just("T"),
    st.lists(paragraph_st, max_size=5).map(tuple),
    st.sampled_from([None, "L"]),
)
spec_st = st.one_of(st.just("sentence"), st.just("paragraph"), st.integers(1, 40).map(lambda n: f"words:{n}"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(article=article_st, spec=spec_st)
def test_chunks_reproduce_the_article(article, spec):
    chunker = make_chunker(spec)
    chunks = chunker.chunk(article)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert all(c.text and c.text == norm(c.text) for c in chunks)
    assert [c.paragraph_index for c in chunks] == sorted(c.paragraph_index for c in chunks)
    for c in chunks:
        p = article.paragraphs[c.paragraph_index]
        assert (c.heading, c.article_id, c.title, c.label) == (
            p.heading,
            article.id,
            article.title,
            article.label,
        )
    # per paragraph (so no chunk crosses one): the chunks re-join to the paragraph's text
    for i, p in enumerate(article.paragraphs):
        mine = [c.text for c in chunks if c.paragraph_index == i]
        assert " ".join(mine) == norm(p.text)
        sentences = [norm(s) for s in split_sentences(norm(p.text))]
        if spec == "sentence":
            assert mine == sentences
        elif spec.startswith("words:"):
            n = int(spec.split(":")[1])
            _check_packing(mine, sentences, n)


def _check_packing(chunks: list[str], sentences: list[str], n: int) -> None:
    """Each chunk is whole consecutive sentences; within n words unless one long sentence; greedy."""
    rest = list(sentences)
    for k, chunk in enumerate(chunks):
        taken = []
        while " ".join(taken) != chunk:
            assert rest, f"chunk {chunk!r} is not made of whole sentences"
            taken.append(rest.pop(0))
        words = len(chunk.split())
        assert words <= n or len(taken) == 1
        if k + 1 < len(chunks):  # greedy: the next sentence would not have fit
            assert words + len(rest[0].split()) > n
    assert rest == []


@pytest.mark.enwiki
def test_chunking_real_enwiki_articles():
    path = ENWIKI / "AA/wiki_00.bz2"
    if not path.exists():
        pytest.skip(f"{path} not present")
    articles = list(read_corpus(path, limit_articles=2))
    for spec in ("sentence", "words:48", "paragraph"):
        chunker = make_chunker(spec)
        for a in articles:
            chunks = chunker.chunk(a)
            assert " ".join(c.text for c in chunks) == " ".join(p.text for p in a.paragraphs)
            if spec == "sentence":
                assert len(chunks) > 3 * len(a.paragraphs) / 2
                assert not [c.text for c in chunks if c.text.endswith((" e.g.", " Dr.", " i.e."))]
