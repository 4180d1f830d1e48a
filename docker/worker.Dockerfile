# syntax=docker/dockerfile:1
# The aesemo training worker, CUDA: `aesemo worker` (RQ SimpleWorker) as a non-root user.
#
#   docker build -f docker/worker.Dockerfile -t aesemo-worker .       # from the repository root
#
# torch==2.14.1 and torchvision==0.29.1 are the default PyPI wheels, which are CUDA 13.0 builds
# (torch.version.cuda == "13.0"; the same build as https://download.pytorch.org/whl/cu130). They
# carry the CUDA runtime and cuDNN as pip packages, so a slim Python base is enough: the host
# needs only the NVIDIA driver (>= 580 for CUDA 13.0) and the NVIDIA Container Toolkit. For another
# CUDA variant, build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cuXYZ
# (one the PyTorch index publishes for torch 2.14.1). Everything is downloaded here, at build time.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AESEMO_DATA_DIR=/data \
    TORCH_HOME=/opt/torch \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# same uid/gid as backend.Dockerfile: both write the shared data volume
RUN groupadd --system --gid 10001 aesemo \
 && useradd --system --uid 10001 --gid aesemo --create-home --home-dir /home/aesemo aesemo \
 && mkdir -p /data /opt/torch \
 && chown aesemo:aesemo /data /opt/torch

WORKDIR /opt/aesemo

COPY docker/requirements.txt /tmp/requirements.txt
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch-requirements.txt \
     && pip install --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple \
            -r /tmp/torch-requirements.txt; \
    fi \
 && pip install -r /tmp/requirements.txt \
 && python -c "import torch, torchvision; assert torch.version.cuda, torch.__version__; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'torchvision', torchvision.__version__)"

COPY pyproject.toml README.md ./
COPY model ./model
COPY backend ./backend
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && aesemo --help > /dev/null

USER aesemo

# torchvision's ImageNet weights into the image ($TORCH_HOME, outside the /data volume), so a new
# model starts pretrained with no download at run time; --build-arg AESEMO_FETCH_WEIGHTS=0 leaves
# them out (a container then downloads them when first needed, or starts random offline)
ARG AESEMO_FETCH_WEIGHTS=1
RUN if [ "$AESEMO_FETCH_WEIGHTS" = 1 ]; then aesemo fetch-weights --backbone vgg16 resnet18 mobilenet_v3_small; fi

WORKDIR /data

# SimpleWorker runs each job in this process (no fork after CUDA is initialised); it logs the
# device it trains on. One container per GPU; see docs/operators/scaling.md.
CMD ["aesemo", "worker"]
