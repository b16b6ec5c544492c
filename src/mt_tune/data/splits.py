"""The fixed validation set and the nested training scales, chosen by a hash of each pair.

Every clean pair gets a 64-bit hash of its text. Sorted by hash, the first `valid_size`
distinct pairs are the validation set, the next `scale` distinct pairs the training set of
that scale. So the validation set does not depend on the scale, and a larger scale holds every
pair of a smaller one (1k ⊂ 10k ⊂ 100k ⊂ full). The vocabulary sample is the first
`vocab_sample` training pairs in the same order, so every scale above it shares one vocabulary.

Only the hashes are kept in memory (8 bytes a pair, sorted in place); the pairs are read
again from disk to be routed. Equal hashes mean equal pairs (a 64-bit collision among five
million pairs has odds of about one in a million), so duplicates fall out of the same array.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from mt_tune.config import format_scale
from mt_tune.errors import DataError

_BLOCK = 1 << 20  # hashes scanned per step by the helpers below (bounded temporary memory)


def pair_hash(src: str, tgt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{src}\x1f{tgt}".encode(), digest_size=8).digest(), "little")


def _distinct_starts(sorted_hashes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mask over [lo, hi): True where a value differs from the one before it."""
    block = sorted_hashes[lo:hi]
    mask = np.empty(len(block), dtype=bool)
    if len(block):
        mask[0] = lo == 0 or sorted_hashes[lo - 1] != block[0]
        np.not_equal(block[1:], block[:-1], out=mask[1:])
    return mask


def count_distinct(sorted_hashes: np.ndarray) -> int:
    return sum(int(_distinct_starts(sorted_hashes, lo, lo + _BLOCK).sum())
               for lo in range(0, len(sorted_hashes), _BLOCK))


def kth_distinct(sorted_hashes: np.ndarray, k: int) -> int | None:
    """The k-th smallest distinct value (k >= 1), or None when there are fewer than k."""
    seen = 0
    for lo in range(0, len(sorted_hashes), _BLOCK):
        mask = _distinct_starts(sorted_hashes, lo, lo + _BLOCK)
        n = int(mask.sum())
        if seen + n >= k:
            return int(sorted_hashes[lo + np.flatnonzero(mask)[k - seen - 1]])
        seen += n
    return None


def repeated_values(sorted_hashes: np.ndarray) -> set[int]:
    """Values that occur more than once."""
    out: set[int] = set()
    for lo in range(0, len(sorted_hashes), _BLOCK):
        block = sorted_hashes[max(lo - 1, 0):lo + _BLOCK]
        out.update(block[1:][block[1:] == block[:-1]].tolist())
    return out


@dataclass
class SplitPlan:
    """Where each hash goes: validation (<= valid_max), training (<= train_max), else unused."""

    valid_max: int  # -1: no pair is held out (the validation set comes from a file)
    train_max: int  # the largest training hash (the whole rest at full scale)
    vocab_max: int  # training pairs up to this hash train the vocabulary
    n_valid: int
    n_train: int
    n_vocab: int
    n_unused: int
    duplicates: set[int] = field(default_factory=set)

    def route(self, h: int) -> str | None:
        if h <= self.valid_max:
            return "valid"
        if h <= self.train_max:
            return "train"
        return None

    def to_dict(self) -> dict:
        return {"valid": self.n_valid, "train": self.n_train, "vocab_sample": self.n_vocab,
                "unused": self.n_unused}


def plan_splits(hashes: np.ndarray, *, valid_size: int, scale: int | None, vocab_sample: int,
                source: str, dedup: bool = True) -> SplitPlan:
    """Sort `hashes` (in place) and pick the validation, training and vocabulary thresholds.

    valid_size: pairs to hold out (0 when a validation file is given); scale: training pairs
    (None: all). Without dedup, copies of a pair count one by one but stay together (same
    hash, same split), so a scale may hold a few pairs more than asked.
    Raises DataError when the corpus is too small for the request.
    """
    hashes.sort()
    if not dedup:
        return _plan_with_copies(hashes, valid_size, scale, vocab_sample, source)
    distinct = count_distinct(hashes)
    available = distinct - valid_size
    check_size(source, distinct, available, valid_size, scale)
    n_train = available if scale is None else scale
    n_vocab = min(n_train, vocab_sample)
    valid_max = kth_distinct(hashes, valid_size) if valid_size else -1
    train_max = kth_distinct(hashes, valid_size + n_train)
    vocab_max = kth_distinct(hashes, valid_size + n_vocab)
    assert valid_max is not None and train_max is not None and vocab_max is not None
    return SplitPlan(valid_max, train_max, vocab_max, valid_size, n_train, n_vocab, available - n_train,
                     repeated_values(hashes))


def _plan_with_copies(hashes: np.ndarray, valid_size: int, scale: int | None, vocab_sample: int,
                      source: str) -> SplitPlan:
    available = len(hashes) - valid_size
    check_size(source, len(hashes), available, valid_size, scale)
    n_train = available if scale is None else scale
    n_vocab = min(n_train, vocab_sample)
    valid_max = int(hashes[valid_size - 1]) if valid_size else -1
    train_max = int(hashes[valid_size + n_train - 1])
    vocab_max = int(hashes[valid_size + n_vocab - 1])
    # the counts follow the thresholds: copies on a boundary all go the same way
    n_valid = int(np.searchsorted(hashes, valid_max, side="right")) if valid_size else 0
    end = int(np.searchsorted(hashes, train_max, side="right"))
    n_vocab = int(np.searchsorted(hashes, vocab_max, side="right")) - n_valid
    return SplitPlan(valid_max, train_max, vocab_max, n_valid, end - n_valid, n_vocab, len(hashes) - end)


def check_size(source: str, distinct: int, available: int, valid_size: int, scale: int | None) -> None:
    """DataError unless `distinct` usable pairs cover the validation set and the scale."""
    if available <= 0:
        raise DataError(f"{source}: only {distinct} usable pairs after cleaning and deduplication, "
                        f"not enough to hold out valid_size={valid_size} for validation and train on the "
                        "rest; lower data.valid_size or give a validation file (data.valid)")
    if scale is not None and scale > available:
        raise DataError(f"{source}: scale {format_scale(scale)} asks for {scale} training pairs, but the corpus "
                        f"has only {available} usable pairs (after cleaning, deduplication and holding out "
                        f"{valid_size} for validation); use data.scale <= {available} or 'full'")
