"""Translation with a trained model (batched greedy and beam search) and BLEU/chrF scoring.

Sentences are sorted by source length and cut into token-budget batches, so a batch holds
sentences of similar length (little padding); the translations come back in input order.

Beam search (fairseq's scheme) keeps `beam` live hypotheses per sentence at every step: of the
2*beam best continuations, those ending in eos (among the best beam) are set apart as finished
with their length-penalised score, and the best `beam` that did not end stay live. So a finished
short hypothesis never takes a live one's place, and a longer candidate survives until the length
penalty can count in its favour. The penalised score divides the log-probability by
length**length_penalty (fairseq's convention: 0 = raw log-probability, 1 = per-token average;
the length counts the eos). A sentence stops when no live hypothesis can still end above its best
finished one (a live score only falls, so its best is its score now over the most favourable
length), or at the length limit; the best finished hypothesis is its translation. Only the best
finished one is kept: the search returns nothing else, and stopping once none can beat the best
gives the same answer as collecting `beam` finished ones and stopping when none can beat the worst.

The output length is capped at max_len_ratio * source_tokens + max_len_add target tokens (and by
the model's max_positions); a hypothesis still running there is ended with eos.
"""

from __future__ import annotations

from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F
from torch import Tensor

from mt_tune.data.vocab import PAD_ID
from mt_tune.errors import UserError
from mt_tune.model import Seq2SeqTransformer


def translate(model: Seq2SeqTransformer, src_tok, tgt_tok, texts: list[str], *, beam: int = 1,
              length_penalty: float = 1.0, max_len_ratio: float = 1.5, max_len_add: int = 10,
              max_tokens: int = 4096, device: str | torch.device | None = None) -> list[str]:
    """Translate `texts`; returns one detokenised string per input, in input order.

    `max_tokens` bounds source tokens per batch times the beam size. `device`: where to run
    (None: wherever the model already is). The model's train/eval mode is restored afterwards.
    """
    ids = translate_ids(model, src_tok.encode(list(texts)), beam=beam, length_penalty=length_penalty,
                        max_len_ratio=max_len_ratio, max_len_add=max_len_add, max_tokens=max_tokens,
                        bos_id=tgt_tok.bos_id, eos_id=src_tok.eos_id, tgt_eos_id=tgt_tok.eos_id, device=device)
    return tgt_tok.decode(ids)


def translate_ids(model: Seq2SeqTransformer, src_ids: list[list[int]], *, beam: int = 1,
                  length_penalty: float = 1.0, max_len_ratio: float = 1.5, max_len_add: int = 10,
                  max_tokens: int = 4096, bos_id: int = 2, eos_id: int = 3, tgt_eos_id: int | None = None,
                  device: str | torch.device | None = None) -> list[list[int]]:
    """Like translate() on token ids (no bos/eos in or out): one id list per source, input order."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    tgt_eos_id = eos_id if tgt_eos_id is None else tgt_eos_id
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    max_src = model.cfg.max_positions - 1  # room for the eos we append
    sources = [list(s[:max_src]) + [eos_id] for s in src_ids]
    results: list[list[int]] = [[] for _ in sources]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch_idx in _length_batches([len(s) for s in sources], max(1, max_tokens // beam)):
                src = _pad([sources[i] for i in batch_idx]).to(device)
                max_len = _max_lengths(src, max_len_ratio, max_len_add, model.cfg.max_positions)
                search = _greedy if beam == 1 else _beam_search
                kw = {} if beam == 1 else {"beam": beam, "length_penalty": length_penalty}
                for i, hyp in zip(batch_idx, search(model, src, max_len, bos_id, tgt_eos_id, **kw)):
                    results[i] = hyp
    finally:
        model.train(was_training)
    return results


def _length_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut so that len(batch) * longest <= max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _pad(seqs: list[list[int]]) -> Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD_ID, dtype=torch.long)
    for row, s in zip(out, seqs):
        row[: len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _max_lengths(src: Tensor, ratio: float, add: int, max_positions: int) -> Tensor:
    """Per sentence: how many target tokens (before eos) it may get."""
    src_len = (src != PAD_ID).sum(1) - 1  # without the eos
    limit = (src_len.float() * ratio).floor().long() + add
    # Position t feeds the token that produced output t+1: the eos goes at position <= max_positions-1.
    return limit.clamp(min=1, max=max_positions - 1)


def _next_token_logprobs(model: Seq2SeqTransformer, tokens: Tensor, cache, bos_id: int) -> Tensor:
    """Log-probabilities of the next token, never pad or bos."""
    logp = F.log_softmax(model.decode_step(tokens, cache).float(), dim=-1)
    logp[:, PAD_ID] = float("-inf")
    logp[:, bos_id] = float("-inf")
    return logp


def _greedy(model, src: Tensor, max_len: Tensor, bos_id: int, eos_id: int) -> list[list[int]]:
    memory, src_mask = model.encode(src)
    cache = model.start_decoding(memory, src_mask)
    n = src.shape[0]
    outputs: list[list[int]] = [[] for _ in range(n)]
    alive = torch.arange(n, device=src.device)  # which sentences the cache rows belong to
    tokens = torch.full((n,), bos_id, dtype=torch.long, device=src.device)
    for step in range(int(max_len.max()) + 1):
        logp = _next_token_logprobs(model, tokens, cache, bos_id)
        at_limit = max_len[alive] <= step
        logp[at_limit] = torch.where(torch.arange(logp.shape[1], device=logp.device) == eos_id, 0.0, float("-inf"))
        tokens = logp.argmax(-1)
        done = tokens == eos_id
        for row, token in zip(alive.tolist(), tokens.tolist()):
            if token != eos_id:
                outputs[row].append(token)
        if bool(done.all()):
            break
        if bool(done.any()):  # drop finished sentences from the batch
            keep = (~done).nonzero().squeeze(1)
            cache.reorder(keep)
            alive, tokens = alive[keep], tokens[keep]
    return outputs


def _beam_search(model, src: Tensor, max_len: Tensor, bos_id: int, eos_id: int, *, beam: int,
                 length_penalty: float) -> list[list[int]]:
    n, k = src.shape[0], beam
    dev = src.device
    memory, src_mask = model.encode(src)
    cache = model.start_decoding(memory.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0))
    # Only the first beam is live at the start, so the k beams do not all pick the same token.
    scores = torch.full((n, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    history = torch.empty(n, k, 0, dtype=torch.long, device=dev)
    tokens = torch.full((n * k,), bos_id, dtype=torch.long, device=dev)
    alive = torch.arange(n, device=dev)  # which sentences the rows of `scores` belong to
    best_score = [float("-inf")] * n  # best finished hypothesis per sentence (penalised score)
    best: list[list[int]] = [[] for _ in range(n)]
    rank = torch.arange(2 * k, device=dev)
    for step in range(int(max_len.max()) + 1):
        m = alive.shape[0]
        logp = _next_token_logprobs(model, tokens, cache, bos_id)
        vocab = logp.shape[1]
        logp = logp.view(m, k, vocab)
        eos_only = torch.full((vocab,), float("-inf"), device=dev)
        eos_only[eos_id] = 0.0
        at_limit = max_len[alive] <= step
        logp[at_limit] = eos_only  # at the length limit: end with eos
        # 2k candidates: each parent has one eos continuation at most, so k live ones remain.
        cand_scores, cand = (scores[:, :, None] + logp).view(m, k * vocab).topk(2 * k, dim=1)
        parent, cand_tokens = cand // vocab, cand % vocab
        is_eos = cand_tokens == eos_id
        # An eos among the top k ends a hypothesis: it leaves the beam for the finished ones,
        # with its length-penalised score (the length counts the eos).
        ended = (is_eos & (rank < k) & torch.isfinite(cand_scores)).nonzero().tolist()
        if ended:
            penalised = (cand_scores / float(step + 1) ** length_penalty).tolist()
            for row, j in ended:
                sentence = int(alive[row])
                if penalised[row][j] > best_score[sentence]:
                    best_score[sentence] = penalised[row][j]
                    best[sentence] = history[row, parent[row, j]].tolist()
        # The beam: the best k candidates that did not end.
        live = (is_eos.long() * 2 * k + rank).argsort(dim=1)[:, :k]
        scores, parent, tokens_mk = cand_scores.gather(1, live), parent.gather(1, live), cand_tokens.gather(1, live)
        history = torch.cat([history.gather(1, parent[:, :, None].expand(-1, -1, history.shape[2])),
                             tokens_mk[:, :, None]], dim=2)
        # A live hypothesis' score only falls, so the best it can end with is its score now over the
        # most favourable length (the longest allowed when length_penalty > 0, else the next step).
        longest = (max_len[alive] + 1).float() if length_penalty > 0 else torch.full((m,), step + 2.0, device=dev)
        attainable = (scores.max(1).values / longest ** length_penalty).tolist()
        done = [bool(at_limit[row]) or attainable[row] <= best_score[int(alive[row])] for row in range(m)]
        if all(done):
            break
        keep = torch.tensor([row for row in range(m) if not done[row]], dtype=torch.long, device=dev)
        cache.reorder((parent + torch.arange(m, device=dev)[:, None] * k)[keep].view(-1))
        alive, scores, history, tokens = alive[keep], scores[keep], history[keep], tokens_mk[keep].view(-1)
    return best


def sequence_logprob(model: Seq2SeqTransformer, src_ids: list[int], tgt_ids: list[int], *,
                     bos_id: int = 2, eos_id: int = 3) -> float:
    """The model's log-probability of target `tgt_ids` + eos given source `src_ids` (no bos/eos)."""
    device = next(model.parameters()).device
    src = torch.tensor([list(src_ids) + [eos_id]], device=device)
    tgt = torch.tensor([[bos_id] + list(tgt_ids) + [eos_id]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logp = F.log_softmax(model(src, tgt[:, :-1]).float(), dim=-1)
    finally:
        model.train(was_training)
    return float(logp[0].gather(1, tgt[0, 1:, None]).sum())


# --- scoring ------------------------------------------------------------------------------


def score(hyps: list[str], refs: list[str], tgt_lang: str = "en") -> dict:
    """Corpus BLEU and chrF (sacrebleu) with their signatures.

    BLEU tokenises Chinese targets with sacrebleu's "zh" tokenizer and everything else with "13a".
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    bleu = sacrebleu.BLEU(tokenize="zh" if tgt_lang.lower().startswith("zh") else "13a")
    chrf = sacrebleu.CHRF()
    bleu_score = bleu.corpus_score(hyps, [refs])
    chrf_score = chrf.corpus_score(hyps, [refs])
    return {"bleu": bleu_score.score, "chrf": chrf_score.score,
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (no trailing newlines); a missing or binary file is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p}: no such file")
    try:
        return p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {p}: not UTF-8 text (byte {e.start})") from None


def evaluate(model: Seq2SeqTransformer, src_tok, tgt_tok, sources: list[str], refs: list[str], *,
             tgt_lang: str = "en", **decode_options) -> tuple[list[str], dict]:
    """Translate `sources` and score them against `refs` (same number of lines, else UserError)."""
    if len(sources) != len(refs):
        raise UserError(f"the source has {len(sources)} lines but the reference has {len(refs)}")
    hyps = translate(model, src_tok, tgt_tok, sources, **decode_options)
    return hyps, score(hyps, refs, tgt_lang)
