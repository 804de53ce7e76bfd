"""Where the shipped samples, data set and Dockerfile live: in a checkout, or inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_root() -> Path:
    """The wheel puts them under `sandbox/_bundled/`; a checkout has them at the repository root."""
    packaged = _PACKAGE_DIR / "_bundled"
    return packaged if packaged.is_dir() else _PACKAGE_DIR.parent


def sample_dirs(kind: str) -> list[Path]:
    """The shipped sample folder for `attack`, `targeted_attack` or `defense`."""
    folder = {"attack": "sample_attacks", "targeted_attack": "sample_targeted_attacks", "defense": "sample_defenses"}
    return [bundled_root() / folder[kind]]


def default_dataset_dir() -> Path:
    return bundled_root() / "dataset" / "fashion_mnist_1k"


def nips17_dir() -> Path:
    """The NIPS 2017 data set descriptions (URL lists) and their provenance note."""
    return bundled_root() / "dataset" / "nips17"


def shipped_csv(path: Path) -> Path:
    """`dataset/nips17/dev_dataset.csv` (as the docs write it) or `dev_dataset.csv`, also from an installed wheel:
    a path that does not exist here but names a shipped NIPS 2017 CSV means the shipped one."""
    path = Path(path)
    if path.exists() or path.parent.as_posix() not in (".", "dataset/nips17"):
        return path
    shipped = nips17_dir() / path.name
    return shipped if shipped.is_file() else path


def dockerfile_dir() -> Path:
    """The folder holding `Dockerfile` and `requirements/`."""
    return bundled_root()
