# whisper-pipeline for GPU hosts: CUDA runtime, Python 3.11, the CUDA build of the pinned torch, then the
# pinned requirements. No secrets in any layer: S3 settings arrive at run time (env_file: .env).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (the version the pins are tested with) and the audio tools the pipeline calls.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ffmpeg libsndfile1 espeak-ng \
    && apt-get purge -y software-properties-common gpg-agent \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv "$VIRTUAL_ENV"

WORKDIR /app
COPY requirements.txt ./
# The CUDA build of torch first; requirements.txt pins the same version, so pip keeps it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && pip install -r requirements.txt

COPY whisper_pipeline ./whisper_pipeline
COPY prepare_data.py train_model.py run_pipeline.sh ./
COPY configs ./configs

RUN useradd --create-home --uid 1000 pipeline \
    && mkdir -p /app/processed_data /app/outputs /cache/huggingface \
    && chown -R pipeline:pipeline /app/processed_data /app/outputs /cache
USER 1000:1000

ENTRYPOINT ["./run_pipeline.sh"]
