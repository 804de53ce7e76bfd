"""Errors meant for the user, as one hierarchy: the CLI prints each as one line and exits 1 (see cli.py).

Every error carries structured fields, so that callers never parse message text: `where` (the file, folder,
setting or piece at fault), `problem` (what is wrong) and `fix` (what to do). Its text is
`WHERE: PROBLEM; FIX`, the one-line form that users see.
"""

from __future__ import annotations

import os


def one_line(text: object, limit: int = 300) -> str:
    """Someone else's words (an exception, a daemon's answer) fit for a one-line error: whitespace collapsed, cut
    at `limit` characters, and the exception's type where it says nothing."""
    words = " ".join(str(text).split())[:limit]
    return words or (type(text).__name__ if isinstance(text, BaseException) else "")


class SandboxError(Exception):
    """A problem the user can fix; it names the file or setting, the problem and the fix."""

    def __init__(self, where: str | os.PathLike[str], problem: str, fix: str = "") -> None:
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    @property
    def message(self) -> str:
        """The problem and its fix, without the place: what a report row beside the place shows."""
        return f"{self.problem}; {self.fix}" if self.fix else self.problem

    def line(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        """Pickles with its three fields (an Exception pickles its text only): a cluster worker's error reaches the
        driver as the same error."""
        return (type(self), (self.where, self.problem, self.fix))


class SubmissionError(SandboxError):
    """A submission cannot take part in a run (bad metadata, missing entry point, unsafe archive)."""


class DataSetError(SandboxError):
    """A data set folder does not meet the data set format (docs/contract.md)."""


class DataMissing(DataSetError):
    """Source data (e.g. Debian's Fashion-MNIST package) is not installed."""


class HostFault(SandboxError):
    """The host, not the submission, failed a piece (a daemon error, a vanished container, a full disk).

    Such a piece is never recorded as the submission's failure: it is retried, or the run stops and can be resumed.
    """


class RunStopping(SandboxError):
    """The run is stopping (an interrupt, a failure elsewhere) and its runtime is closed: a piece still on a worker
    ends here instead of starting a container, and is not tried again (a resume runs it)."""


class RuntimeUnavailable(HostFault):
    """The container runtime cannot be reached: the run waits for it (--docker-wait), then stops cleanly."""


class ImageBuildError(SandboxError):
    """A runtime image could not be built."""
