"""Dockerfile: the image's torch is the version the tests run on, in a CUDA build."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_args() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    head = text[:text.index("\nFROM ")]  # the ARGs before FROM are the ones the base image tag can use
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", head, re.M))


def test_image_torch_is_the_tested_torch():
    ci = re.findall(r"pip_install torch==(\S+)", (ROOT / ".ci" / "run").read_text())
    readme = set(re.findall(r"pip install torch==([\d.]+)", (ROOT / "README.md").read_text()))
    assert len(ci) == 1 and readme == set(ci), (ci, readme)
    args = dockerfile_args()
    assert args["TORCH"] == ci[0]
    assert re.fullmatch(r"\d+\.\d+", args["CUDA"])


def test_base_image_and_build_check_use_those_versions():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM pytorch/pytorch:\$\{TORCH\}-cuda\$\{CUDA\}-cudnn\d+-runtime$", text, re.M)
    after_from = text[text.index("\nFROM "):]
    assert re.search(r"^ARG TORCH$", after_from, re.M) and re.search(r"^ARG CUDA$", after_from, re.M)
    # pip may not replace the base image's torch, and the build stops if it is not the one asked for
    assert 'echo "torch==${TORCH}" > /tmp/torch-constraint.txt' in text
    assert "pip install --constraint /tmp/torch-constraint.txt ." in text
    assert "('${TORCH}', '${CUDA}')" in text and "torch.version.cuda" in text
