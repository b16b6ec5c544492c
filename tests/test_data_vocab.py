"""Sentencepiece training and the Tokenizer."""

from __future__ import annotations

import pytest

from mt_tune.data.sample import iter_sample
from mt_tune.data.vocab import Tokenizer, train_sentencepiece
from mt_tune.errors import DataError


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "sentences.txt"
    lines = [side for _, zh, en, reason in iter_sample() if reason is None for side in (zh, en)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(sample_file):
    return train_sentencepiece(sample_file, sample_file.with_name("joint.model"), vocab_size=2000,
                               model_type="unigram", character_coverage=0.9995, what="the sample")


def test_special_ids_and_roundtrip(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == 2000
    ids = tokenizer.encode(["老师，您好！", "Hello, teacher!"])
    assert all(i > 3 for seq in ids for i in seq)  # no bos/eos added
    assert tokenizer.decode(ids) == ["老师,您好!", "Hello, teacher!"]  # sentencepiece's NFKC folds full-width


def test_decode_stops_at_eos_and_skips_pad_and_bos(tokenizer):
    ids = tokenizer.encode(["Hello, teacher!"])[0]
    assert tokenizer.decode([[2, *ids, 3, 57, 99, 0, 0]]) == ["Hello, teacher!"]
    assert tokenizer.decode([[0, 2, 3]]) == [""]


def test_from_bytes_matches_the_file(tokenizer):
    again = Tokenizer.from_bytes(tokenizer.model_bytes())
    assert again.path is None and again.vocab_size == tokenizer.vocab_size
    assert again.encode(["我们去学校。"]) == tokenizer.encode(["我们去学校。"])


def test_vocab_size_too_large_gives_the_largest(sample_file, tmp_path):
    with pytest.raises(DataError, match=r"data.vocab_size=20000 is too large for the sample: sentencepiece can build "
                                        r"at most (\d+) pieces from it; set data.vocab_size <= \1"):
        train_sentencepiece(sample_file, tmp_path / "m.model", vocab_size=20000, model_type="unigram",
                            character_coverage=0.9995, what="the sample")
    assert not (tmp_path / "m.model").exists()


def test_vocab_size_too_small_gives_the_smallest(sample_file, tmp_path):
    with pytest.raises(DataError, match=r"data.vocab_size=100 is too small .*need \d+ pieces"):
        train_sentencepiece(sample_file, tmp_path / "m.model", vocab_size=100, model_type="bpe",
                            character_coverage=0.9995, what="the sample")


def test_not_a_model(tmp_path):
    (tmp_path / "x.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="x.model: not a sentencepiece model"):
        Tokenizer(tmp_path / "x.model")
