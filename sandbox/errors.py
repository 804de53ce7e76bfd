"""Errors meant for the user: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class SandboxError(Exception):
    """A problem the user can fix; the message names the file or setting and the fix."""


class SubmissionError(SandboxError):
    """A submission cannot take part in a run (bad metadata, missing entry point, unsafe archive)."""


class DataSetError(SandboxError):
    """A data set folder does not meet SPEC section 3."""


class RuntimeUnavailable(SandboxError):
    """The container runtime cannot be reached: the run cannot complete, so no piece is recorded as failed."""


class ImageBuildError(SandboxError):
    """A runtime image could not be built."""
