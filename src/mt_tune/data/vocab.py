"""Sentencepiece vocabularies: training (quietly, from a sentence file) and the Tokenizer.

Every model mt-tune trains has the same special ids: pad=0, unk=1, bos=2, eos=3.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from mt_tune.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class Tokenizer:
    """A sentencepiece model: text <-> ids, without bos/eos (the batcher adds those)."""

    def __init__(self, path: str | Path | None = None, *, model_proto: bytes | None = None):
        if (path is None) == (model_proto is None):
            raise ValueError("give a model path or model_proto bytes")
        self.path = Path(path) if path is not None else None
        self._sp = spm.SentencePieceProcessor()
        try:
            if model_proto is not None:
                self._sp.LoadFromSerializedProto(model_proto)
            else:
                self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path or 'embedded tokenizer'}: not a sentencepiece model ({e})") from None
        self.pad_id = self._sp.pad_id()
        self.unk_id = self._sp.unk_id()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()

    @classmethod
    def from_bytes(cls, model_proto: bytes) -> Tokenizer:
        return cls(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def model_bytes(self) -> bytes:
        return self._sp.serialized_model_proto()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[Sequence[int]]) -> list[str]:
        """Ids back to text: each sequence stops at its first eos; pad and bos are dropped."""
        out = []
        for seq in ids:
            pieces = []
            for i in (int(x) for x in seq):
                if i == self.eos_id:
                    break
                if i != self.pad_id and i != self.bos_id:
                    pieces.append(i)
            out.append(self._sp.decode(pieces))
        return out

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path) if self.path else 'embedded'}, vocab_size={self.vocab_size})"


def train_sentencepiece(sentences: Path, out: Path, *, vocab_size: int, model_type: str,
                        character_coverage: float, what: str) -> Tokenizer:
    """Train a model on a file of sentences (one a line) and write it to `out` atomically.

    `what` names the data in errors ("the joint zh+en sample"). A vocab size the data cannot
    support is a DataError that gives the size that works.
    """
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            input=str(sentences), model_writer=proto, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID,
            eos_id=EOS_ID, input_sentence_size=0, num_threads=os.cpu_count() or 1,
            minloglevel=2,  # quiet: sentencepiece logs every step to stderr otherwise
        )
    except RuntimeError as e:
        raise DataError(_explain(str(e), vocab_size, what)) from None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(proto.getvalue())
    os.replace(tmp, out)
    return Tokenizer(out)


def _explain(message: str, vocab_size: int, what: str) -> str:
    if m := _TOO_HIGH.search(message):
        return (f"data.vocab_size={vocab_size} is too large for {what}: sentencepiece can build at most "
                f"{m.group(2)} pieces from it; set data.vocab_size <= {m.group(2)}")
    if m := _TOO_LOW.search(message):
        return (f"data.vocab_size={vocab_size} is too small for {what}: its characters alone need "
                f"{m.group(2)} pieces; set data.vocab_size >= {m.group(2)} or lower data.character_coverage")
    return f"sentencepiece could not train on {what} (data.vocab_size={vocab_size}): {message.splitlines()[-1]}"
