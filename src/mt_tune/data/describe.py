"""Plain-text summaries of a corpus report and of prepared data, as the CLI prints them."""

from __future__ import annotations


def describe_report(report: dict) -> str:
    """The text of `data check` / `data prepare`: per corpus, pairs kept, skips, lengths."""
    lines = []
    for role in ("train", "valid"):
        corpus = report.get(role)
        if not corpus:
            continue
        lines.append(f"{role} corpus: {corpus['source']} ({corpus['format']})")
        lines.append(f"  lines read      {corpus['lines']:>10,}")
        lines.append(f"  pairs kept      {corpus['kept']:>10,}")
        for reason, skip in corpus["skipped"].items():
            first = ", ".join(map(str, skip["first_lines"]))
            lines.append(f"  skipped {reason:<13}{skip['count']:>8,}  {skip['reason']}; first lines: {first}")
        for side in ("src", "tgt"):
            c = corpus["chars"][side]
            lines.append(f"  {side} characters  min {c['min']}, mean {c['mean']}, median {c['median']}, "
                         f"p95 {c['p95']}, max {c['max']}")
    splits = report.get("splits")
    if splits:
        lines.append(f"splits: {splits['valid']:,} validation, {splits['train']:,} training pairs "
                     f"({splits['unused']:,} beyond the scale), vocabulary sample {splits['vocab_sample']:,} pairs")
    return "\n".join(lines)


def describe_stats(stats: dict) -> str:
    """Vocabulary and shard statistics of `prepare`."""
    v = stats["vocab"]
    kind = "joint" if v["joint"] else "per side"
    sizes = f"{v['src_size']:,}" if v["joint"] else f"src {v['src_size']:,}, tgt {v['tgt_size']:,}"
    lines = [f"vocabulary: sentencepiece {v['type']}, {kind}, size {sizes}"
             + (" (cached)" if v.get("cache_hit") else "")]
    for split in ("train", "valid"):
        s = stats[split]
        lines.append(f"  {split:<5} {s['pairs']:>9,} pairs; tokens per sentence src {s['src_tokens_per_sentence']}, "
                     f"tgt {s['tgt_tokens_per_sentence']}; unknown rate src {100 * s['src_unk_rate']:.3f} %, "
                     f"tgt {100 * s['tgt_unk_rate']:.3f} %")
    lines.append(f"shards: {stats['dtype']} ids, {stats['train']['src_tokens'] + stats['train']['tgt_tokens']:,} "
                 f"training tokens, in {stats['cache_dir']}")
    return "\n".join(lines)
