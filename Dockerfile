# Runtime images for the sample submissions. Builds offline: every wheel comes from the build context
# (`sandbox images build` downloads them on the host first), and RUN steps need no network.
#
#   BASE_IMAGE: any image with python3 (3.11) and its venv module. Users with a registry keep the default;
#   `sandbox images build` bootstraps a Debian bookworm base with debootstrap when it cannot be pulled.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
RUN python3 -m venv /opt/venv
ARG CONTENT_HASH=unknown
LABEL org.adversarial-sandbox.target=base org.adversarial-sandbox.content-hash=${CONTENT_HASH}

# Wheels are installed in a build stage and only the venv is copied on, so no wheel stays in a layer.
FROM base AS torch-cpu-build
COPY requirements/torch-cpu.txt /tmp/requirements.txt
COPY wheels/torch-cpu/ /tmp/wheels/
RUN pip install --no-index --no-cache-dir --no-compile --find-links /tmp/wheels -r /tmp/requirements.txt

FROM base AS torch-cpu
ARG CONTENT_HASH=unknown
COPY --from=torch-cpu-build /opt/venv /opt/venv
LABEL org.adversarial-sandbox.target=torch-cpu org.adversarial-sandbox.content-hash=${CONTENT_HASH}

FROM base AS tensorflow-cpu-build
COPY requirements/tensorflow-cpu.txt /tmp/requirements.txt
COPY wheels/tensorflow-cpu/ /tmp/wheels/
RUN pip install --no-index --no-cache-dir --no-compile --find-links /tmp/wheels -r /tmp/requirements.txt

FROM base AS tensorflow-cpu
ARG CONTENT_HASH=unknown
COPY --from=tensorflow-cpu-build /opt/venv /opt/venv
LABEL org.adversarial-sandbox.target=tensorflow-cpu org.adversarial-sandbox.content-hash=${CONTENT_HASH}
