"""Token-budget batches from length buckets: Batch and BatchIterator.

Pairs are sorted by their longer side, then by the difference of source and target length
(pairs of the same shape together; ties broken at random per epoch), and cut into consecutive
runs whose padded size, batch size x the longer padded side, stays within `max_tokens`.
Neighbours in that order have nearly equal lengths on both sides, so little is padding
(13.7 % on the bundled sample at 4,096 tokens; sorting by source then target length: 22 %). The
order of the batches is then shuffled by (seed, epoch). Everything depends only on the shard,
max_tokens, the seed and the epoch, so a resumed iterator replays exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mt_tune.data.shards import Shard
from mt_tune.data.vocab import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    src: torch.Tensor  # [B, S] long: ids + eos, padded
    tgt_in: torch.Tensor  # [B, T] long: bos + ids, padded
    tgt_out: torch.Tensor  # [B, T] long: ids + eos, padded
    n_src_tokens: int  # non-pad tokens
    n_tgt_tokens: int

    @property
    def size(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(self.src.to(device, non_blocking=non_blocking), self.tgt_in.to(device, non_blocking=non_blocking),
                     self.tgt_out.to(device, non_blocking=non_blocking), self.n_src_tokens, self.n_tgt_tokens)


class BatchIterator:
    """Batches of one shard. shuffle=True: endless, epoch after epoch; shuffle=False: one
    deterministic pass per iteration (validation). Pairs too long for max_tokens on their own
    are left out and counted in `n_skipped`."""

    def __init__(self, shard: Shard, max_tokens: int, seed: int = 0, shuffle: bool = True, pad_id: int = PAD_ID,
                 bos_id: int = BOS_ID, eos_id: int = EOS_ID):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        self.shard, self.max_tokens, self.seed, self.shuffle = shard, int(max_tokens), int(seed), shuffle
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        # padded lengths: the source gets eos, the target bos (input) or eos (output)
        self._src_len = shard.src_lens.astype(np.int64) + 1
        self._tgt_len = shard.tgt_lens.astype(np.int64) + 1
        fits = np.maximum(self._src_len, self._tgt_len) <= self.max_tokens
        self._usable = np.flatnonzero(fits)
        self.n_skipped = int(len(fits) - len(self._usable))
        self.epoch = 0
        self._position = 0  # batches of the current epoch already yielded
        self._plan: tuple[int, list[np.ndarray]] | None = None

    # --- the plan of one epoch ---

    def batches_of_epoch(self, epoch: int) -> list[np.ndarray]:
        """The pair indices of each batch of `epoch`, in the order they are yielded."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        idx = self._usable
        src, tgt = self._src_len[idx], self._tgt_len[idx]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            tiebreak = rng.random(len(idx))
        else:
            tiebreak = idx
        order = np.lexsort((tiebreak, src - tgt, np.maximum(src, tgt)))
        batches = _pack(idx[order], src[order], tgt[order], self.max_tokens)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._plan = (epoch, batches)
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.batches_of_epoch(self.epoch))

    @property
    def padding_ratio(self) -> float:
        """Pad positions over all positions of one epoch's batches, both sides together."""
        pad = slots = 0
        for b in self.batches_of_epoch(self.epoch):
            s, t = self._src_len[b], self._tgt_len[b]
            size = len(b) * (int(s.max()) + int(t.max()))
            slots += size
            pad += size - int(s.sum()) - int(t.sum())
        return pad / slots if slots else 0.0

    # --- iteration and its state ---

    def __iter__(self) -> Iterator[Batch]:
        if not self.shuffle:
            for b in self.batches_of_epoch(0):
                yield self.make_batch(b)
            return
        while True:
            batches = self.batches_of_epoch(self.epoch)
            while self._position < len(batches):
                b = batches[self._position]
                self._position += 1
                yield self.make_batch(b)
            self.epoch += 1
            self._position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self._position, "seed": self.seed,
                "max_tokens": self.max_tokens, "pairs": len(self.shard)}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("max_tokens", self.max_tokens), ("pairs", len(self.shard))):
            if state.get(key, mine) != mine:
                raise ValueError(f"batch iterator state is for {key}={state[key]}, this iterator has {mine}: "
                                 "a resumed run needs the same data and max_tokens")
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._plan = None

    # --- one batch ---

    def make_batch(self, indices: np.ndarray) -> Batch:
        pairs = [self.shard.pair(int(i)) for i in indices]
        n = len(pairs)
        s_len = max(len(s) for s, _ in pairs) + 1
        t_len = max(len(t) for _, t in pairs) + 1
        src = np.full((n, s_len), self.pad_id, dtype=np.int64)
        tgt_in = np.full((n, t_len), self.pad_id, dtype=np.int64)
        tgt_out = np.full((n, t_len), self.pad_id, dtype=np.int64)
        n_src = n_tgt = 0
        for row, (s, t) in enumerate(pairs):
            src[row, : len(s)] = s
            src[row, len(s)] = self.eos_id
            tgt_in[row, 0] = self.bos_id
            tgt_in[row, 1 : len(t) + 1] = t
            tgt_out[row, : len(t)] = t
            tgt_out[row, len(t)] = self.eos_id
            n_src += len(s) + 1
            n_tgt += len(t) + 1
        return Batch(torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out), n_src, n_tgt)


def _pack(indices: np.ndarray, src: np.ndarray, tgt: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Cut length-sorted pairs into consecutive batches with size x longest side <= max_tokens."""
    batches, start, longest = [], 0, 0
    for i, need in enumerate(np.maximum(src, tgt).tolist()):
        grown = max(longest, need)
        if (i - start + 1) * grown > max_tokens:
            batches.append(indices[start:i])
            start, grown = i, need
        longest = grown
    if start < len(indices):
        batches.append(indices[start:])
    return batches
