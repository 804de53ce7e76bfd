"""Errors meant for the user: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class SandboxError(Exception):
    """A problem the user can fix; the message names the file or setting and the fix."""


class SubmissionError(SandboxError):
    """A submission cannot take part in a run (bad metadata, missing entry point, unsafe archive)."""


class DataSetError(SandboxError):
    """A data set folder does not meet SPEC section 3."""


class HostFault(SandboxError):
    """The host, not the submission, failed a piece (a daemon error, a vanished container, a full disk).

    Such a piece is never recorded as the submission's failure: it is retried, or the run stops and can be resumed.
    """


class RuntimeUnavailable(HostFault):
    """The container runtime cannot be reached: the run waits for it (--docker-wait), then stops cleanly."""


class ImageBuildError(SandboxError):
    """A runtime image could not be built."""
