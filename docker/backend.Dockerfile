# syntax=docker/dockerfile:1
# The aesemo ML backend, CPU only: `aesemo serve` (gunicorn) on port 9090, as a non-root user.
#
#   docker build -f docker/backend.Dockerfile -t aesemo-backend .     # from the repository root
#
# torch and torchvision come from the PyTorch CPU index (no CUDA libraries: a much smaller image);
# everything else from PyPI, at the pins of docker/requirements.txt (= pyproject.toml). Everything is
# downloaded here, at build time: the running container downloads nothing, torchvision's ImageNet
# weights included (see AESEMO_FETCH_WEIGHTS below and docs/operators/docker.md).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AESEMO_DATA_DIR=/data \
    TORCH_HOME=/opt/torch \
    AESEMO_WORKERS=1 \
    AESEMO_THREADS=4

# one fixed uid/gid for both images, so the shared data volume is writable by backend and worker
RUN groupadd --system --gid 10001 aesemo \
 && useradd --system --uid 10001 --gid aesemo --create-home --home-dir /home/aesemo aesemo \
 && mkdir -p /data /opt/torch \
 && chown aesemo:aesemo /data /opt/torch

WORKDIR /opt/aesemo

# dependencies first (their own layer, rebuilt only when the pins change)
COPY docker/requirements.txt /tmp/requirements.txt
RUN grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch-requirements.txt \
 && pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch-requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && python -c "import torch, torchvision; assert torch.version.cuda is None, torch.__version__; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

COPY pyproject.toml README.md ./
COPY model ./model
COPY backend ./backend
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && aesemo --help > /dev/null

COPY docker/healthcheck.py /usr/local/bin/aesemo-healthcheck
RUN chmod 0755 /usr/local/bin/aesemo-healthcheck

USER aesemo

# torchvision's ImageNet weights into the image ($TORCH_HOME, outside the /data volume), so a new
# model starts pretrained with no download at run time; --build-arg AESEMO_FETCH_WEIGHTS=0 leaves
# them out (a container then downloads them when first needed, or starts random offline)
ARG AESEMO_FETCH_WEIGHTS=1
RUN if [ "$AESEMO_FETCH_WEIGHTS" = 1 ]; then aesemo fetch-weights --backbone vgg16 resnet18 mobilenet_v3_small; fi

WORKDIR /data
EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/aesemo-healthcheck", "http://127.0.0.1:9090/health"]

# shell form through exec: the variables are expanded, and gunicorn becomes PID 1 (gets SIGTERM)
CMD exec aesemo serve --host 0.0.0.0 --port 9090 --workers "${AESEMO_WORKERS}" --threads "${AESEMO_THREADS}"
