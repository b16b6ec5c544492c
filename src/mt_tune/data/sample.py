"""The bundled zh-en sample: the 4,354 HSK sentences of the package hsk-sentences-audio.

The records carry `chinese` and `translation.en`. Eighty of them have the English text
`placeholder` (or `placeholder-p3`, `placeholder-q1`, ...) instead of a translation; a model
trained on them learns to emit "placeholder", so they are skipped and counted like any other
bad line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

PLACEHOLDER = re.compile(r"placeholder(-[a-z]?\d+)?", re.IGNORECASE)
SAMPLE_NAME = "hsk-sentences-audio"


def iter_sample() -> Iterator[tuple[int, str | None, str | None, str | None]]:
    """(record number, zh, en, skip reason or None), record numbers counted from 1."""
    import hsk_sentences_audio

    for number, record in enumerate(hsk_sentences_audio.load_sentences(), start=1):
        zh = record.get("chinese")
        translation = record.get("translation")
        en = translation.get("en") if isinstance(translation, dict) else None
        if not isinstance(zh, str) or not isinstance(en, str):
            yield number, None, None, "missing_field"
        elif PLACEHOLDER.fullmatch(en.strip()):
            yield number, None, None, "placeholder"
        else:
            yield number, zh, en, None
