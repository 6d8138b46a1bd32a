# whisper-pipeline: Debian bookworm (its python3 is 3.11, the version the pins are tested with), the pinned
# torch from TORCH_INDEX_URL, then the pinned requirements. No secrets in any layer: S3 settings arrive at
# run time (env_file: .env); configs, the model and adapters are mounted (docker-compose.yml).
#
# Build arguments (docker compose build --build-arg NAME=VALUE, or .env: see docker-compose.yml):
#   BASE_IMAGE       a Debian bookworm image (default debian:bookworm-slim). No CUDA base is needed: the CUDA
#                    wheels of torch bring the CUDA runtime, cuBLAS and cuDNN; the NVIDIA container
#                    toolkit adds the host's driver at run time.
#   TORCH_INDEX_URL  where torch comes from. cu126 (default): CUDA 12.6, host drivers R525 and later, and
#                    the CUDA 12 / cuDNN 9 that ctranslate2's wheels need. cu130: CUDA 13, drivers R580 and
#                    later only (nvidia-smi shows the driver). torch 2.13 has no cu128 wheels.
# Optional files in build-extras/ (see its README): ca-bundle.crt, the CA bundle pip trusts behind a
# TLS-intercepting proxy, and *.whl wheels preferred to the index's (e.g. a CPU torch). Both are used in
# the first stage only: the image keeps neither.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
COPY build-extras/ /tmp/build-extras/
# The torch of TORCH_INDEX_URL (or a wheel of build-extras/) first; requirements.txt pins the same version,
# so pip keeps it.
RUN if [[ -f /tmp/build-extras/ca-bundle.crt ]]; then export PIP_CERT=/tmp/build-extras/ca-bundle.crt; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --find-links /tmp/build-extras --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/pip install --find-links /tmp/build-extras -r /tmp/requirements.txt

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/pipeline \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python, the audio tools prepare calls (ffmpeg for formats libsndfile cannot read), and a home and caches
# writable by any uid: compose runs as the host user (HOST_UID:HOST_GID).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ffmpeg libsndfile1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 pipeline \
    && mkdir -p /cache/huggingface \
    && chmod 1777 /home/pipeline /cache/huggingface
WORKDIR /app
USER 1000:1000
ENTRYPOINT ["./run_pipeline.sh"]
# The large environment, then the code: an edit rebuilds only the last two layers.
COPY --from=build /opt/venv /opt/venv
COPY whisper_pipeline ./whisper_pipeline
COPY prepare_data.py train_model.py run_pipeline.sh ./
