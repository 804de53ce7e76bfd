"""The names of the sandbox's own runtime images, in one place (images.py builds them, the runtime and the
templates name them, the tests ask for them)."""

from __future__ import annotations

IMAGE_NAMESPACE = "adversarial-sandbox"
IMAGE_VERSION = "0.1"


def image_tag(target: str) -> str:
    """`base`, `torch-cpu` or `tensorflow-cpu` -> the tag `sandbox images build` gives it."""
    return f"{IMAGE_NAMESPACE}/{target}:{IMAGE_VERSION}"


def is_sandbox_image(image: str) -> bool:
    """One of ours (the sandbox builds it when missing), not a submission's or a registry's."""
    return image.startswith(f"{IMAGE_NAMESPACE}/")
