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

# GPU images, built only on demand (`sandbox images build --gpu`; docs/gpu.md), from the same base. CUDA comes
# with the frameworks' own wheels (torch's nvidia-* dependencies, tensorflow[and-cuda]): no nvidia/cuda base image
# and no registry. The host needs an NVIDIA driver and the NVIDIA container toolkit; `--gpus` sets which GPUs a
# container sees, the image only which driver parts it needs. Each target is built from its own stages only
# (sandbox/images.py), so these do not touch the CPU images above.
FROM base AS torch-gpu-build
COPY requirements/torch-gpu.txt /tmp/requirements.txt
COPY wheels/torch-gpu/ /tmp/wheels/
RUN pip install --no-index --no-cache-dir --no-compile --find-links /tmp/wheels -r /tmp/requirements.txt

FROM base AS torch-gpu
ARG CONTENT_HASH=unknown
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=torch-gpu-build /opt/venv /opt/venv
LABEL org.adversarial-sandbox.target=torch-gpu org.adversarial-sandbox.content-hash=${CONTENT_HASH}

FROM base AS tensorflow-gpu-build
COPY requirements/tensorflow-gpu.txt /tmp/requirements.txt
COPY wheels/tensorflow-gpu/ /tmp/wheels/
RUN pip install --no-index --no-cache-dir --no-compile --find-links /tmp/wheels -r /tmp/requirements.txt

FROM base AS tensorflow-gpu
ARG CONTENT_HASH=unknown
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=tensorflow-gpu-build /opt/venv /opt/venv
LABEL org.adversarial-sandbox.target=tensorflow-gpu org.adversarial-sandbox.content-hash=${CONTENT_HASH}
