"""Token-id shards on disk: flat numpy memmaps of ids plus an offset index, written atomically.

One split (train or valid) is three files in a shard directory:
  {split}.src.bin, {split}.tgt.bin   all ids of one side back to back (uint16 when the vocab
                                     fits in 65,535 ids, else uint32), no bos/eos
  {split}.idx                        int64 [n + 1, 2]: where pair i starts on each side
A shard directory is built under a temporary name and renamed into place when complete, so a
crash mid-write leaves nothing that looks like a finished shard; builds hold a file lock
(`build_lock`), so one process builds while the others wait.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt_tune.data.vocab import UNK_ID
from mt_tune.errors import DataError

META = "meta.json"
TMP_PREFIX = ".tmp-"
LOCK = ".lock"


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


@dataclass
class EncodedSide:
    """One side of a chunk of pairs: all ids back to back and each sentence's length."""

    ids: np.ndarray
    lens: np.ndarray

    @classmethod
    def from_lists(cls, ids: list[list[int]], dtype: np.dtype) -> EncodedSide:
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
        return cls(flat, lens)


class Shard:
    """One split's token ids, memory-mapped: len(), src_lens/tgt_lens, pair(i)."""

    def __init__(self, directory: str | Path, split: str):
        self.directory = Path(directory)
        self.split = split
        meta = json.loads((self.directory / META).read_text())
        self.dtype = np.dtype(meta["dtype"])
        self._index = _memmap(self.directory / f"{split}.idx", np.dtype(np.int64)).reshape(-1, 2)
        self._src = _memmap(self.directory / f"{split}.src.bin", self.dtype)
        self._tgt = _memmap(self.directory / f"{split}.tgt.bin", self.dtype)
        self._lens: tuple[np.ndarray, np.ndarray] | None = None

    # The lengths (8 bytes a pair) are read on first use, by the batcher: preparing data or
    # counting pairs does not need them.
    @property
    def src_lens(self) -> np.ndarray:
        return self._lengths()[0]

    @property
    def tgt_lens(self) -> np.ndarray:
        return self._lengths()[1]

    def _lengths(self) -> tuple[np.ndarray, np.ndarray]:
        if self._lens is None:
            self._lens = _lengths(self.directory / f"{self.split}.idx")
        return self._lens

    def __len__(self) -> int:
        return len(self._index) - 1

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        (s0, t0), (s1, t1) = self._index[i], self._index[i + 1]
        return np.asarray(self._src[s0:s1]), np.asarray(self._tgt[t0:t1])

    def take(self, indices: np.ndarray, src_lens: np.ndarray, tgt_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of these pairs (whose lengths are given), each side's back to back in pair
        order: two fancy-indexed reads of the arrays. pair() per pair costs ~45 us in numpy's
        memmap indexing, most of a batch's build time."""
        starts = np.asarray(self._index)[indices]  # a plain view: no memmap.__getitem__ per read
        out = []
        for side, (ids, lens) in enumerate(((self._src, src_lens), (self._tgt, tgt_lens))):
            # position of every id: its pair's start plus its offset within the pair
            within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            out.append(np.asarray(ids)[np.repeat(starts[:, side], lens) + within])
        return out[0], out[1]

    def __repr__(self) -> str:
        return f"Shard({self.directory.name}/{self.split}, {len(self)} pairs)"


def _lengths(index_path: Path, block_rows: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Sentence lengths per side from the offset index, read in blocks: plain reads leave the
    index in the page cache instead of in this process's memory (as touched memmap pages)."""
    n = index_path.stat().st_size // 16 - 1
    src, tgt = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    with open(index_path, "rb") as f:
        prev = np.fromfile(f, dtype=np.int64, count=2).reshape(1, 2)
        done = 0
        while done < n:
            block = np.fromfile(f, dtype=np.int64, count=2 * block_rows).reshape(-1, 2)
            diff = np.diff(np.concatenate([prev, block]), axis=0)
            src[done:done + len(diff)] = diff[:, 0]
            tgt[done:done + len(diff)] = diff[:, 1]
            done += len(diff)
            prev = block[-1:]
    return src, tgt


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class ShardWriter:
    """Appends encoded chunks of one split to its files; close() writes the last index row."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype):
        self.split, self.dtype = split, dtype
        self._src = open(directory / f"{split}.src.bin", "wb")
        self._tgt = open(directory / f"{split}.tgt.bin", "wb")
        self._idx = open(directory / f"{split}.idx", "wb")
        self.pairs = 0
        self.tokens = [0, 0]
        self.unks = [0, 0]

    def add(self, src: EncodedSide, tgt: EncodedSide) -> None:
        starts = np.empty((len(src.lens), 2), dtype=np.int64)
        for side, (enc, f) in enumerate(((src, self._src), (tgt, self._tgt))):
            starts[:, side] = self.tokens[side] + np.cumsum(enc.lens) - enc.lens
            self.tokens[side] += int(enc.lens.sum())
            self.unks[side] += int(np.count_nonzero(enc.ids == UNK_ID))
            enc.ids.astype(self.dtype, copy=False).tofile(f)
        starts.tofile(self._idx)
        self.pairs += len(src.lens)

    def close(self) -> dict:
        np.array([self.tokens], dtype=np.int64).tofile(self._idx)
        for f in (self._src, self._tgt, self._idx):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        n = max(self.pairs, 1)
        return {"pairs": self.pairs, "src_tokens": self.tokens[0], "tgt_tokens": self.tokens[1],
                "src_tokens_per_sentence": round(self.tokens[0] / n, 2),
                "tgt_tokens_per_sentence": round(self.tokens[1] / n, 2),
                "src_unk_rate": round(self.unks[0] / max(self.tokens[0], 1), 6),
                "tgt_unk_rate": round(self.unks[1] / max(self.tokens[1], 1), 6)}

    def abort(self) -> None:
        for f in (self._src, self._tgt, self._idx):
            f.close()


def shard_files_ok(directory: Path) -> bool:
    """A finished shard directory: meta present and every file the size meta says."""
    try:
        meta = json.loads((directory / META).read_text())
        return all((directory / name).stat().st_size == size for name, size in meta["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.name != META}


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it to `final` only if the block ends
    normally. The caller holds the parent's `build_lock` and builds only what is missing or
    damaged, so a `final` that exists is damaged: it is replaced."""
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            # Moved aside, not deleted in place: a crash between the renames leaves a temporary
            # directory (removed as stale) and no `final`, never a half-deleted `final`.
            old = final.parent / f"{TMP_PREFIX}old-{final.name}-{secrets.token_hex(4)}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- the build lock ------------------------------------------------------------------------
# A flock on `directory/.lock`, held for the whole of a build. Every temporary directory in
# `directory` is made by the holder, so a temporary directory with the lock free is stale: the
# kernel releases a flock when its holder dies, however it dies, and the lock is seen by every
# process on the same file system, also in other containers sharing the cache volume (where
# process ids, by which staleness used to be judged, mean nothing).

_held: set[int] = set()  # file descriptors of the locks this process holds


def _close_held_in_child() -> None:
    # A forked child (a process-pool worker of the build) gets copies of the lock's descriptor,
    # and a flock lasts while any copy is open: a worker outliving a killed builder would keep
    # the lock forever. Close the copies; never LOCK_UN, which would unlock the parent's too.
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _open_lock(directory: Path) -> int:
    path = directory / LOCK
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        try:  # made by another user: flock needs no write access on a local file system
            return os.open(path, os.O_RDONLY)
        except OSError as e:
            raise DataError(f"{path}: cannot open the cache's build lock ({e.strerror})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot create the cache's build lock ({e.strerror}); "
                        f"data.cache_dir must be a writable directory") from None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def build_lock(directory: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold `directory`'s build lock: wait while another process holds it (`on_wait` is called
    once if so), then remove the temporary directories that builders which died left there."""
    fd = _open_lock(directory)
    try:
        if not _try_lock(fd):
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held.add(fd)
        _remove_tmp_dirs(directory)
        yield
    finally:
        _held.discard(fd)
        os.close(fd)  # releases the lock


def remove_stale_tmp(parent: Path) -> bool:
    """Remove the temporary directories in `parent` if no process holds its build lock (their
    builders died); leave them while a build runs. Does not wait. True if it removed them."""
    if not parent.is_dir():
        return False
    try:
        fd = _open_lock(parent)
    except DataError:  # a read-only cache: nothing could be removed anyway
        return False
    try:
        if not _try_lock(fd):
            return False
        _remove_tmp_dirs(parent)
        return True
    finally:
        os.close(fd)


def _remove_tmp_dirs(parent: Path) -> None:
    for p in parent.iterdir():
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
