"""Decoding and scoring: a tiny model trained to copy its input, a real sentencepiece model, sacrebleu."""

import io
import random

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F

from mt_tune.config import ModelConfig
from mt_tune.data import Tokenizer
from mt_tune.decode import (
    evaluate,
    read_lines,
    score,
    sequence_logprob,
    translate,
    translate_ids,
)
from mt_tune.errors import UserError
from mt_tune.model import Seq2SeqTransformer

WORDS = "zero one two three four five six seven eight nine ten red blue green cat dog".split()


# Tiny models run fastest on one thread (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sentences():
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) for _ in range(2000)]


@pytest.fixture(scope="module")
def tok(sentences):
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=proto, vocab_size=40,
                                   pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
    return Tokenizer.from_bytes(proto.getvalue())


def train_copy_model(tok, sentences, steps, seed=0):
    """A 1+1-layer model trained to copy its input: its correct output is known."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    v = tok.vocab_size
    model = Seq2SeqTransformer(ModelConfig(d_model=48, n_heads=4, enc_layers=1, dec_layers=1, ffn_dim=96,
                                           dropout=0.0, src_vocab_size=v, tgt_vocab_size=v))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = tok.encode(sentences)
    for _ in range(steps):
        seqs = rng.sample(ids, 32)
        width = max(map(len, seqs)) + 1
        src, tgt_in, tgt_out = (torch.zeros(32, width, dtype=torch.long) for _ in range(3))
        for i, s in enumerate(seqs):
            src[i, : len(s) + 1] = torch.tensor(s + [tok.eos_id])
            tgt_in[i, : len(s) + 1] = torch.tensor([tok.bos_id] + s)
            tgt_out[i, : len(s) + 1] = torch.tensor(s + [tok.eos_id])
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def copy_model(tok, sentences):
    return train_copy_model(tok, sentences, steps=200)


@pytest.fixture(scope="module")
def half_trained(tok, sentences):
    """Uncertain enough that greedy and beam search disagree."""
    return train_copy_model(tok, sentences, steps=40)


def test_greedy_and_beam_translate_a_copy_model(copy_model, tok, sentences):
    texts = sentences[:40]
    for beam in (1, 4):
        hyps = translate(copy_model, tok, tok, texts, beam=beam)
        assert len(hyps) == len(texts)
        result = score(hyps, texts)
        assert result["bleu"] > 60, (beam, result)
        assert sum(h == t for h, t in zip(hyps, texts)) > 25


def test_batching_does_not_change_translations(half_trained, tok, sentences):
    texts = sentences[100:130]
    for beam in (1, 3):
        big = translate(half_trained, tok, tok, texts, beam=beam, max_tokens=10_000)
        small = translate(half_trained, tok, tok, texts, beam=beam, max_tokens=24)
        alone = [translate(half_trained, tok, tok, [t], beam=beam)[0] for t in texts[:8]]
        assert big == small
        assert big[:8] == alone


def test_beam_search_finds_a_better_model_score_than_greedy(half_trained, tok, sentences):
    src = tok.encode(sentences[200:260])
    greedy = translate_ids(half_trained, src, beam=1)
    beamed = translate_ids(half_trained, src, beam=5, length_penalty=0.0)  # rank by raw log-probability
    g = [sequence_logprob(half_trained, s, h) for s, h in zip(src, greedy)]
    b = [sequence_logprob(half_trained, s, h) for s, h in zip(src, beamed)]
    assert sum(b) > sum(g)
    assert sum(bi >= gi - 1e-4 for bi, gi in zip(b, g)) >= 0.9 * len(src)
    assert greedy != beamed


def test_length_limit(half_trained, tok, sentences):
    src = tok.encode(sentences[:20])
    for beam in (1, 3):
        out = translate_ids(half_trained, src, beam=beam, max_len_ratio=0.0, max_len_add=2)
        assert all(len(h) <= 2 for h in out)
        out = translate_ids(half_trained, src, beam=beam, max_len_ratio=0.5, max_len_add=0)
        assert all(len(h) <= max(1, len(s) // 2) for h, s in zip(out, src))


def test_edge_inputs_and_mode_restored(copy_model, tok):
    assert translate(copy_model, tok, tok, []) == []
    copy_model.train()
    out = translate(copy_model, tok, tok, ["", "cat dog"], beam=2)
    assert copy_model.training
    copy_model.eval()
    assert len(out) == 2 and isinstance(out[0], str)


def test_score_uses_the_right_tokenizer_and_signatures():
    en = score(["the cat sat on the mat ."], ["the cat sat on the mat ."])
    assert en["bleu"] == pytest.approx(100.0) and en["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in en["bleu_signature"] and "nc:6" in en["chrf_signature"]
    zh = score(["我喜欢猫。"], ["我喜欢狗。"], tgt_lang="zh")
    assert "tok:zh" in zh["bleu_signature"]
    assert 0 < zh["bleu"] < 100
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"])


def test_evaluate_and_file_errors(copy_model, tok, sentences, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_lines(tmp_path / "missing.txt", "source file")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        read_lines(binary, "reference file")
    with pytest.raises(UserError, match="2 lines"):
        evaluate(copy_model, tok, tok, ["a", "b"], ["a"])
    hyps, result = evaluate(copy_model, tok, tok, sentences[:10], sentences[:10])
    assert len(hyps) == 10 and result["bleu"] > 50


# --- the translate and evaluate commands --------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from mt_tune.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def checkpoint(copy_model, tok, tmp_path):
    """The copy model saved the way `mt-tune train` saves a run."""
    from mt_tune.checkpoint import CHECKPOINT_VERSION, bytes_to_tensor, save_atomic
    from mt_tune.config import DataConfig, RunConfig, to_dict

    cfg = RunConfig(data=DataConfig(format="sample"), model=copy_model.cfg)
    path = tmp_path / "copy.pt"
    spm_tensor = bytes_to_tensor(tok.model_bytes())
    save_atomic({"version": CHECKPOINT_VERSION, "config": to_dict(cfg), "model": copy_model.state_dict(),
                 "step": 200, "src_spm": spm_tensor, "tgt_spm": spm_tensor}, path)
    return path


def test_translate_command(checkpoint, sentences, tmp_path, capsys, monkeypatch):
    texts = sentences[:6]
    expected = translate(*_loaded(checkpoint), texts, beam=2)
    src = tmp_path / "src.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, out, _ = run_cli(["translate", str(checkpoint), "-i", str(src), "--beam", "2", "--device", "cpu"], capsys)
    assert code == 0 and out.splitlines() == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts)))
    code, out, _ = run_cli(["translate", str(checkpoint), "--beam", "2"], capsys)
    assert code == 0 and out.splitlines() == expected


def _loaded(path):
    from mt_tune.checkpoint import load_checkpoint

    model, _, src_tok, tgt_tok = load_checkpoint(path)
    return model, src_tok, tgt_tok


def test_evaluate_command(checkpoint, sentences, tmp_path, capsys):
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("\n".join(sentences[:20]), encoding="utf-8")
    ref.write_text("\n".join(sentences[:20]), encoding="utf-8")
    code, out, _ = run_cli(["evaluate", str(checkpoint), "--src", str(src), "--ref", str(ref), "--beam", "1"], capsys)
    assert code == 0
    bleu_line, chrf_line = out.splitlines()
    assert bleu_line.startswith("BLEU ") and float(bleu_line.split()[1]) > 50 and "tok:13a" in bleu_line
    assert chrf_line.startswith("chrF ") and "nc:6" in chrf_line


def test_commands_reject_bad_files(checkpoint, tmp_path, capsys):
    src = tmp_path / "src.txt"
    src.write_text("cat dog\n", encoding="utf-8")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:200])
    for argv, message in [
        (["translate", str(corrupt), "-i", str(src)], "corrupt.pt"),
        (["translate", str(checkpoint), "-i", str(tmp_path / "none.txt")], "none.txt: no such file"),
        (["evaluate", str(checkpoint), "--src", str(src), "--ref", str(tmp_path / "none.txt")], "none.txt"),
        (["evaluate", str(checkpoint), "--src", str(src), "--ref", str(checkpoint)], "not UTF-8"),
    ]:
        code, out, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert message in err and "Traceback" not in err


# --- beam search keeps live hypotheses apart from finished ones ----------------------------

A, B, C, D, E, X = 4, 5, 6, 7, 8, 9  # token ids of a 10-token vocabulary (0-3: pad, unk, bos, eos)


def bigram_model(next_token: dict[int, dict[int, float]]) -> Seq2SeqTransformer:
    """A real Seq2SeqTransformer whose next-token distribution depends only on the last token:
    `next_token[t]` gives the probabilities after t (the rest of the mass is spread evenly over the
    other tokens). Decoder layers and positions are zeroed, so the residual stream is the token's
    embedding; embeddings are orthogonal mean-zero ±1 rows (which the final LayerNorm leaves as
    they are), and the output projection maps each row to the log-probabilities of its token."""
    vocab, d = 10, 16
    model = Seq2SeqTransformer(ModelConfig(d_model=d, n_heads=1, enc_layers=1, dec_layers=1, ffn_dim=4,
                                           dropout=0.0, positions="learned", share_embeddings=False,
                                           tie_output=False, src_vocab_size=vocab, tgt_vocab_size=vocab))
    hadamard = torch.ones(1, 1)
    while hadamard.shape[0] < d:
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)])
    rows = hadamard[1:vocab + 1]  # orthogonal, each with mean 0 and variance 1
    logits = torch.full((vocab, vocab), -30.0)
    for prev, probs in next_token.items():
        rest = (1.0 - sum(probs.values())) / (vocab - 4 - len(probs))
        logits[prev] = torch.tensor([probs.get(t, rest) if t >= 3 else 1e-13 for t in range(vocab)]).log()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.zero_()
        model.tgt_pos.weight.zero_()
        model.tgt_embed.weight.copy_(rows / model.embed_scale)
        model.out_proj.weight.copy_(logits.T @ rows / d)  # logits[t] for the row of token t
    return model.eval()


def test_beam_search_keeps_a_longer_hypothesis_that_finished_ones_would_displace():
    bos, eos = 2, 3
    model = bigram_model({
        bos: {A: 0.7, B: 0.25},
        A: {eos: 0.6, X: 0.38},
        X: {eos: 0.9},
        B: {C: 0.97}, C: {D: 0.97}, D: {E: 0.97}, E: {eos: 0.97},
    })
    src = [[A, B, C]]

    def penalised(hyp):
        return sequence_logprob(model, src[0], hyp) / (len(hyp) + 1)

    # Per token, B C D E beats A and A X: its first step is the unlikely one.
    assert penalised([B, C, D, E]) > penalised([A]) > penalised([A, X])
    assert translate_ids(model, src, beam=1) == [[A]]
    # After one step the beam holds A (-0.36) and B (-1.39). At the next, A+eos (-0.87) and A X
    # (-1.33) both score above B C (-1.42): a search that keeps finished hypotheses in the beam
    # drops B C there and returns [A].
    assert translate_ids(model, src, beam=2, length_penalty=1.0) == [[B, C, D, E]]
    # Ranked by raw log-probability, the short one is the right answer.
    assert translate_ids(model, src, beam=2, length_penalty=0.0) == [[A]]
