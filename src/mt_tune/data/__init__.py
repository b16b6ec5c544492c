"""Corpora to token batches: read, clean, split, sentencepiece, shards, batching."""

from mt_tune.data.batching import Batch, BatchIterator
from mt_tune.data.clean import CorpusReport, DataReport
from mt_tune.data.prepare import PreparedData, check_corpus, prepare
from mt_tune.data.shards import Shard
from mt_tune.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "Batch", "BatchIterator", "CorpusReport", "DataReport", "PreparedData",
    "Shard", "Tokenizer", "check_corpus", "prepare",
]
