"""The data cache's build lock: processes preparing one corpus at once build it once, a finished
cache is read without waiting, and a temporary directory is stale only when its builder died."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mt_tune.config import DataConfig, build_section
from mt_tune.data import prepare
from mt_tune.data.shards import remove_stale_tmp
from mt_tune.errors import DataError

N_PROCS = 4


def write_tsv(path: Path, n: int) -> Path:
    rng = random.Random(0)
    zh, en = "我你他是的了在有不这个人大中国学生老师好看书", "i you he is the a in have not this big country student".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k = rng.randint(2, 8)
            f.write("".join(rng.choice(zh) for _ in range(k)) + f"{i}。\t"
                    + " ".join(rng.choice(en) for _ in range(k)) + f" {i}.\n")
    return path


def raw_config(tmp_path: Path, corpus: Path, **kw) -> dict:
    return {"train": [str(corpus)], "vocab_size": 120, "valid_size": 50, "cache_dir": str(tmp_path / "cache"), **kw}


# A child: counts its sentencepiece trainings in a shared file, waits for the start signal so
# that all of them call prepare at the same moment, and prints what it got.
CHILD = textwrap.dedent("""
    import hashlib, importlib, json, os, sys, time
    from pathlib import Path
    from mt_tune.config import DataConfig, build_section

    prepare_module = importlib.import_module("mt_tune.data.prepare")

    raw, counter, ready, go = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    real_train = prepare_module.train_sentencepiece

    def counted_train(*args, **kw):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
        # Widen the window in which, without the lock, another process would train as well.
        time.sleep(0.3)
        return real_train(*args, **kw)

    prepare_module.train_sentencepiece = counted_train
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    data = prepare_module.prepare(build_section(DataConfig, raw, "data"))

    def digest(shard):
        h = hashlib.sha256()
        for i in range(len(shard)):
            src, tgt = shard.pair(i)
            h.update(src.tobytes() + b"|" + tgt.tobytes() + b"/")
        return h.hexdigest()

    print(json.dumps({
        "cache_hit": data.cache_hit, "cache_dir": str(data.cache_dir),
        "model": hashlib.sha256(data.src_tok.model_bytes()).hexdigest(),
        "train": digest(data.train), "valid": digest(data.valid), "pairs": [len(data.train), len(data.valid)],
        "valid_ref": hashlib.sha256("\\n".join(data.valid_ref).encode()).hexdigest(),
        "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data.cache_dir.iterdir())},
    }))
""")


def test_processes_preparing_one_corpus_at_once_build_it_once(tmp_path):
    corpus = write_tsv(tmp_path / "corpus.tsv", 1200)
    raw = raw_config(tmp_path, corpus)
    counter, go = tmp_path / "trainings", tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(N_PROCS)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(raw), str(counter), str(r), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("a child did not start: " + " ".join(p.stderr.read() for p in procs if p.poll() is not None))
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * N_PROCS, [err for _, err in outputs]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outputs]

    assert len(counter.read_text().splitlines()) == 1  # sentencepiece trained once, by one process
    assert sorted(r["cache_hit"] for r in results) == [False] + [True] * (N_PROCS - 1)
    same = [{k: v for k, v in r.items() if k != "cache_hit"} for r in results]
    assert all(r == same[0] for r in same[1:])  # the same cache: files, models, token ids, text
    assert same[0]["pairs"] == [1150, 50] and "meta.json" in results[0]["files"]
    corpus_dir = Path(same[0]["cache_dir"]).parent
    assert not list(corpus_dir.glob(".tmp-*"))
    assert len(list(corpus_dir.glob("vocab-*"))) == len(list(corpus_dir.glob("shards-*"))) == 1


# A child that holds a directory's build lock, as a builder does, with a temporary directory in
# it; with a pool worker forked while it holds the lock (as the encoding workers are), if asked.
HOLDER = textwrap.dedent("""
    import multiprocessing, sys, time
    from pathlib import Path
    from mt_tune.data.shards import build_lock

    directory, with_worker = Path(sys.argv[1]), sys.argv[2] == "1"
    with build_lock(directory):
        (directory / ".tmp-shards-x-0123abcd").mkdir()
        pool = multiprocessing.get_context("fork").Pool(1) if with_worker else None
        worker = pool.apply_async(__import__("os").getpid).get() if pool else 0
        if pool:
            pool.apply_async(time.sleep, (120,))
        print(f"held {worker}", flush=True)
        time.sleep(120)
""")


def hold_lock(directory: Path, with_worker: bool = False) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), "1" if with_worker else "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("held"), f"the lock holder failed (status {proc.wait()})"
    return proc, int(line.split()[1])


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_live_builders_temp_dir_is_kept_and_a_dead_ones_removed(tmp_path):
    corpus = write_tsv(tmp_path / "corpus.tsv", 400)
    cfg = build_section(DataConfig, raw_config(tmp_path, corpus), "data")
    first = prepare(cfg)
    corpus_dir = first.cache_dir.parent
    tmp = corpus_dir / ".tmp-shards-x-0123abcd"

    holder, _ = hold_lock(corpus_dir)
    try:
        assert tmp.is_dir()
        assert remove_stale_tmp(corpus_dir) is False and tmp.is_dir()  # its builder is alive
        # A finished cache is read without waiting for the lock.
        again = prepare(cfg)
        assert again.cache_hit and holder.poll() is None and tmp.is_dir()
        assert again.train.pair(3)[0].tolist() == first.train.pair(3)[0].tolist()
    finally:
        kill(holder)
    # The kernel released the dead holder's lock: its leftover is stale.
    assert remove_stale_tmp(corpus_dir) is True and not tmp.exists()


def test_a_pool_worker_of_a_dead_builder_does_not_keep_the_lock(tmp_path):
    holder, worker = hold_lock(tmp_path, with_worker=True)
    try:
        assert remove_stale_tmp(tmp_path) is False
        kill(holder)
        os.kill(worker, 0)  # the forked worker outlives the builder (it is still in its task) ...
        assert remove_stale_tmp(tmp_path) is True  # ... without holding the lock
        assert not (tmp_path / ".tmp-shards-x-0123abcd").exists()
    finally:
        kill(holder)
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_unusable_cache_dir_is_a_data_error(tmp_path):
    corpus = write_tsv(tmp_path / "corpus.tsv", 200)
    (tmp_path / "file").write_text("not a directory")
    cfg = build_section(DataConfig, raw_config(tmp_path, corpus, cache_dir=str(tmp_path / "file" / "cache")), "data")
    with pytest.raises(DataError, match=r"data.cache_dir=.*file/cache: cannot create .*corpus-"):
        prepare(cfg)
