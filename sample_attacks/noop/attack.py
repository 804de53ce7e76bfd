"""noop attack: copies every input PNG to the output folder unchanged (the zero-perturbation baseline).

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import shutil
import sys
from pathlib import Path


def copy_images(input_dir: Path, output_dir: Path) -> None:
    """Byte-for-byte copy, so size and mode are kept exactly."""
    for path in sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file()):
        shutil.copyfile(path, output_dir / path.name)


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    copy_images(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
