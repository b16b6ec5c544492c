# mt-tune on a CUDA-enabled PyTorch base: the image of the `worker` and `dashboard` services in
# docker-compose.yml.
#
# torch is the version the tests run on (.ci/run and the README install torch==2.13.0), in its
# CUDA build: the official PyTorch image of that version brings it, with the CUDA runtime and
# cuDNN it was built against. CUDA 13.0 is the build PyPI ships as torch 2.13.0 for Linux
# (its wheel depends on cuda-toolkit 13.0); it needs an NVIDIA driver >= 580 on the host. For an
# older driver, build with `--build-arg CUDA=12.6`: the same torch built for CUDA 12.6 (driver
# >= 525). Installing mt-tune is constrained to that torch, and the build fails if the image's
# torch is another version or not a CUDA build.
ARG TORCH=2.13.0
ARG CUDA=13.0
FROM pytorch/pytorch:${TORCH}-cuda${CUDA}-cudnn9-runtime
ARG TORCH
ARG CUDA

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mt-tune
COPY pyproject.toml README.md ./
COPY src ./src
RUN echo "torch==${TORCH}" > /tmp/torch-constraint.txt \
    && pip install --constraint /tmp/torch-constraint.txt . \
    && python -c "import sys, torch; v, c = torch.__version__.split('+')[0], torch.version.cuda; \
sys.exit(0 if (v, c) == ('${TORCH}', '${CUDA}') else f'torch {torch.__version__} (CUDA {c}): expected ${TORCH} for CUDA ${CUDA}')" \
    && mt-tune --help > /dev/null

# Run as an unprivileged user. /work is the working directory (study specs, the data cache);
# /artifacts receives the trial checkpoints — mount a volume, or on several machines a path
# all of them share, so that a retried trial finds its checkpoint.
RUN useradd --create-home --uid 1000 mt \
    && mkdir -p /work/.mt-tune-cache /artifacts \
    && chown -R mt:mt /work /artifacts
COPY --chown=mt:mt studies /work/studies
USER mt
WORKDIR /work

CMD ["mt-tune", "--help"]
