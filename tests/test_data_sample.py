"""The bundled sample reader."""

from mt_tune.data.sample import PLACEHOLDER, iter_sample


def test_sample_records_and_placeholders():
    records = list(iter_sample())
    assert len(records) == 4354
    assert records[0] == (1, "老师，您好！", "Hello, teacher!", None)
    reasons = [r for _, _, _, r in records if r is not None]
    assert reasons == ["placeholder"] * 80
    assert all(PLACEHOLDER.fullmatch(s) for s in ("placeholder", "placeholder-p12", "placeholder-q1"))
    assert not PLACEHOLDER.fullmatch("a placeholder for the rest")
