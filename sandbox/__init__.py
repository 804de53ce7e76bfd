"""adversarial-sandbox: score adversarial attacks against defenses, each submission in its own container.

The public API; the `sandbox` CLI is a thin layer over these functions.
"""

__version__ = "0.1.0"

from sandbox.competition import RunOptions, RunResult, rebuild_report, run_competition  # noqa: E402
from sandbox.dataset import build_fashion_mnist, load_dataset  # noqa: E402
from sandbox.runtime.base import Limits  # noqa: E402
from sandbox.submission import load_submission  # noqa: E402

__all__ = [
    "Limits",
    "RunOptions",
    "RunResult",
    "__version__",
    "build_fashion_mnist",
    "load_dataset",
    "load_submission",
    "rebuild_report",
    "run_competition",
]
