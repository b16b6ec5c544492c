"""Token-budget batches from length buckets: Batch and BatchIterator.

Pairs are sorted by their longer side, then by the difference of source and target length
(pairs of the same shape together; ties broken at random per epoch), and cut into consecutive
runs whose padded size, batch size x the longer padded side, stays within `max_tokens`.
Neighbours in that order have nearly equal lengths on both sides, so little is padding
(13.7 % on the bundled sample at 4,096 tokens; sorting by source then target length: 22 %). The
order of the batches is then shuffled by (seed, epoch). Everything depends only on the shard,
max_tokens, the seed and the epoch, so a resumed iterator replays exactly.

`pad_multiple` rounds padded lengths up (8 for torch.compile: fewer distinct shapes, sizes
that suit its kernels); the budget counts the rounded lengths. TrainBatches builds one DDP
process's share of each update in a background thread.

Batches are numpy arrays: the data pipeline does not import torch (the trainer turns them into
tensors, through TrainBatches' `convert`).
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mt_tune.data.shards import Shard
from mt_tune.data.vocab import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    """One batch of pairs. The arrays are numpy int64 as built here; the trainer replaces them
    with torch tensors of the same shapes (device.batch_tensors)."""

    src: Any  # [B, S] int64: ids + eos, padded
    tgt_in: Any  # [B, T] int64: bos + ids, padded
    tgt_out: Any  # [B, T] int64: ids + eos, padded
    n_src_tokens: int  # non-pad tokens
    n_tgt_tokens: int
    # (source, target) non-pad tokens of the whole update this batch is part of, all processes
    # and micro-batches together; set by TrainBatches
    update_tokens: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        """Pairs in the batch."""
        return self.src.shape[0]


class BatchIterator:
    """Batches of one shard. shuffle=True: endless, epoch after epoch; shuffle=False: one
    deterministic pass per iteration (validation). Pairs too long for max_tokens on their own
    are left out and counted in `n_skipped`."""

    def __init__(self, shard: Shard, max_tokens: int, seed: int = 0, shuffle: bool = True, pad_id: int = PAD_ID,
                 bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_multiple: int = 1):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        if pad_multiple < 1:
            raise ValueError(f"pad_multiple must be at least 1, got {pad_multiple}")
        self.shard, self.max_tokens, self.seed, self.shuffle = shard, int(max_tokens), int(seed), shuffle
        self.pad_id, self.bos_id, self.eos_id, self.pad_multiple = pad_id, bos_id, eos_id, int(pad_multiple)
        # lengths with eos (source, target output) or bos (target input): real tokens per pair
        self._src_len = shard.src_lens.astype(np.int64) + 1
        self._tgt_len = shard.tgt_lens.astype(np.int64) + 1
        fits = np.maximum(self._round(self._src_len), self._round(self._tgt_len)) <= self.max_tokens
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
        batches = _pack(idx[order], self._round(src[order]), self._round(tgt[order]), self.max_tokens)
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
            size = len(b) * int(self._round(s.max()) + self._round(t.max()))
            slots += size
            pad += size - int(s.sum()) - int(t.sum())
        return pad / slots if slots else 0.0

    def _round(self, lengths):
        """Padded length(s): rounded up to a multiple of pad_multiple."""
        m = self.pad_multiple
        return lengths if m == 1 else -(-lengths // m) * m

    def tokens(self, indices: np.ndarray) -> tuple[int, int]:
        """(source, target) non-pad tokens of the batch of these pairs, without building it."""
        return int(self._src_len[indices].sum()), int(self._tgt_len[indices].sum())

    # --- iteration and its state ---

    def __iter__(self) -> Iterator[Batch]:
        for b in self.plan():
            yield self.make_batch(b)

    def plan(self) -> Iterator[np.ndarray]:
        """The pair indices of each batch, in the order __iter__ builds them, from the current
        position on; each one taken advances the position (state_dict) past it."""
        if not self.shuffle:
            yield from self.batches_of_epoch(0)
            return
        while True:
            batches = self.batches_of_epoch(self.epoch)
            if not batches:  # else this loop would never yield
                raise ValueError(f"no pair of {self.shard} fits in max_tokens={self.max_tokens}")
            while self._position < len(batches):
                b = batches[self._position]
                self._position += 1
                yield b
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

    def seek(self, epoch: int, position: int) -> None:
        """Go back (or on) to batch `position` of `epoch`, keeping the seed and the cached plan."""
        self.epoch, self._position = int(epoch), int(position)

    # --- one batch ---

    def make_batch(self, indices: np.ndarray) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        s_lens, t_lens = self._src_len[indices] - 1, self._tgt_len[indices] - 1  # ids without eos/bos
        src_ids, tgt_ids = self.shard.take(indices, s_lens, t_lens)
        n, rows = len(indices), np.arange(len(indices))
        s_len, t_len = int(self._round(s_lens.max() + 1)), int(self._round(t_lens.max() + 1))
        # Row-major boolean masks take the concatenated ids in pair order: no loop over pairs.
        s_mask = np.arange(s_len) < s_lens[:, None]
        t_mask = np.arange(t_len) < t_lens[:, None]
        src = np.full((n, s_len), self.pad_id, dtype=np.int64)
        src[s_mask] = src_ids
        src[rows, s_lens] = self.eos_id
        tgt_out = np.full((n, t_len), self.pad_id, dtype=np.int64)
        tgt_out[t_mask] = tgt_ids
        tgt_out[rows, t_lens] = self.eos_id
        tgt_in = np.full((n, t_len), self.pad_id, dtype=np.int64)
        tgt_in[:, 0] = self.bos_id
        tgt_in[:, 1:][t_mask[:, :-1]] = tgt_ids
        n_src, n_tgt = int(s_lens.sum()) + n, int(t_lens.sum()) + n
        return Batch(src, tgt_in, tgt_out, n_src, n_tgt)


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


class TrainBatches:
    """One process's training batches, update after update, built ahead in a background thread.

    An update is `accum_steps x world_size` consecutive batches of the iterator's plan; process
    `rank` trains on every world_size-th of them from its rank on (the split DDP always used),
    and only those are built here. Each carries the update's total tokens in `update_tokens`,
    counted from the plan's lengths, so every process scales its loss alike without building
    the others' batches or communicating. `convert`, if given, runs in the thread on each batch
    before it is handed out (the trainer's: torch tensors, pinned for CUDA so that the copy to
    the GPU is asynchronous), so that this work too is done ahead, off the training loop.

    state_dict() is the iterator's position after the last batch handed out, not after those
    built ahead: a checkpoint resumes exactly where training was. close() stops and joins the
    thread and rewinds the iterator to that position; the next batch asked for starts it again.
    """

    def __init__(self, batches: BatchIterator, accum_steps: int = 1, rank: int = 0, world_size: int = 1,
                 convert: Callable[[Batch], Any] | None = None, ahead: int = 4):
        if not batches.shuffle:
            raise ValueError("TrainBatches needs an endless (shuffle=True) BatchIterator")
        self.batches, self.accum_steps, self.rank, self.world_size = batches, accum_steps, rank, world_size
        self.convert = convert
        self.ahead = max(1, ahead)
        self._consumed = (batches.epoch, batches.state_dict()["position"])
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> Any:
        """The next batch of this process (as `convert` returns it)."""
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self._consumed = item
        return batch

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.ahead)
        self._thread = threading.Thread(target=_build_ahead, name="mt-tune-batches", daemon=True,
                                        args=(self.batches, self.accum_steps, self.rank, self.world_size,
                                              self.convert, self._stop, self._queue))
        self._thread.start()
        # A TrainBatches dropped without close() (a Trainer never fitted) still ends its thread:
        # the thread holds the iterator and the queue, never this object.
        weakref.finalize(self, _stop_thread, self._stop, self._queue)

    def close(self) -> None:
        if self._thread is None:
            return
        _stop_thread(self._stop, self._queue)
        self._thread.join()
        self._thread = None
        self.batches.seek(*self._consumed)

    def state_dict(self) -> dict:
        epoch, position = self._consumed
        return {**self.batches.state_dict(), "epoch": epoch, "position": position}

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.batches.load_state_dict(state)
        self._consumed = (self.batches.epoch, self.batches.state_dict()["position"])


def _build_ahead(batches: BatchIterator, accum: int, rank: int, world: int, convert: Callable[[Batch], Any] | None,
                 stop: threading.Event, out: queue.Queue) -> None:
    """The thread of TrainBatches: (batch, (epoch, position) after its share of the plan) into `out`."""
    try:
        plan = batches.plan()
        while not stop.is_set():
            update, after = [], []  # `world` plan entries per micro-batch, the position after each group
            for _ in range(accum):
                update.append([next(plan) for _ in range(world)])
                after.append((batches.epoch, batches.state_dict()["position"]))
            counts = [batches.tokens(b) for group in update for b in group]
            totals = (sum(c[0] for c in counts), sum(c[1] for c in counts))
            for group, position in zip(update, after):
                batch = batches.make_batch(group[rank])
                batch.update_tokens = totals
                if convert is not None:
                    batch = convert(batch)
                if stop.is_set():
                    return
                out.put((batch, position))
    except BaseException as e:  # handed to the consumer, which raises it
        if not stop.is_set():
            out.put(e)


def _stop_thread(stop: threading.Event, out: queue.Queue) -> None:
    """Tell the thread to stop and empty its queue, so that a put it is blocked in returns."""
    stop.set()
    while True:
        try:
            out.get_nowait()
        except queue.Empty:
            return
