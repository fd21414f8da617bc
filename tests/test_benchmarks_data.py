"""benchmarks.data's corpus without timing anything: documents of the built-in corpus's text, about the size asked."""
import json

import pytest

from benchmarks.data import write_corpus


@pytest.mark.parametrize("megabytes", [0.05, 0.3])
def test_corpus_has_about_the_size_asked_in_documents_of_at_most_doc_chars(tmp_path, megabytes):
    path = tmp_path / "corpus.jsonl"
    count = write_corpus(path, megabytes, doc_chars=1000)
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert len(docs) == count > 1
    chars = sum(map(len, docs))
    assert megabytes * 1e6 <= chars < megabytes * 1e6 + 1000
    assert all(0 < len(d) <= 1000 for d in docs)
