# mt-tune on a CUDA-enabled PyTorch base: the image of the `worker` and `dashboard` services in
# docker-compose.yml. The base brings torch with CUDA; installing mt-tune keeps it (torch>=2.4).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mt-tune
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && mt-tune --help > /dev/null

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
