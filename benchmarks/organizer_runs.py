"""An organizer's competition, timed: ~30 generated light submissions (benchmarks/organizer_corpus.py, some of them
broken) received in one folder, on the shipped data set.

Measures, on this machine and in one run:
  - a full run with --jobs 1 and with --jobs 2 (each with the default CPU share), and their ratio;
  - an incremental run: the run without 3 late submissions, then those 3 added to the finished run folder, as a
    share of the full run's time (and a check that it scores exactly as the full run);
  - scoring and the report alone (`sandbox report`, i.e. `rebuild_report`) on the full run.

    python benchmarks/organizer_runs.py [--images 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sandbox import Limits, RunOptions, rebuild_report, run_competition
from sandbox.bundled import default_dataset_dir
from sandbox.dataset import subset_dataset
from sandbox.reporting import NIPS_FILES

HERE = Path(__file__).resolve().parent
# The generated submissions need well under a second per 100 images; with the default limits (500 s per 100
# images) the one that sleeps would hold a worker for 600 s. Organizers set limits to their competition too.
LIMITS = Limits(time_per_100_images=2.0, min_time=20.0)


def _corpus_module():
    spec = importlib.util.spec_from_file_location("organizer_corpus", HERE / "organizer_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timed_run(out: Path, dataset: Path, folders: list[Path], jobs: int) -> float:
    started = time.monotonic()
    run_competition(RunOptions(submissions=tuple(folders), dataset=dataset, out=out, jobs=jobs, limits=LIMITS))
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images of the shipped data set to use")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="sbx-organizer-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus_module = _corpus_module()
    dataset = subset_dataset(default_dataset_dir(), work / "data", args.images)
    corpus = corpus_module.write_corpus(work / "received")
    late = corpus_module.write_corpus(work / "late", late=True)
    n = len(corpus.admitted) + len(corpus.refused) + len(late.admitted)
    print(
        f"{n} submissions ({len(corpus.refused)} refused at intake, {len(corpus.incomplete)} failing), "
        f"{args.images} images; limits {LIMITS.time_per_100_images:g} s per 100 images, at least {LIMITS.min_time:g} s"
    )
    full = {jobs: timed_run(work / f"full_j{jobs}", dataset, [corpus.folder, late.folder], jobs) for jobs in (1, 2)}
    base = timed_run(work / "incremental", dataset, [corpus.folder], 2)
    added = timed_run(work / "incremental", dataset, [corpus.folder, late.folder], 2)
    same = all((work / "incremental" / f).read_bytes() == (work / "full_j2" / f).read_bytes() for f in NIPS_FILES)
    started = time.monotonic()
    rebuild_report(work / "full_j2")
    report_s = time.monotonic() - started
    print(f"full run --jobs 1: {full[1]:.1f} s")
    print(f"full run --jobs 2: {full[2]:.1f} s ({full[1] / full[2]:.2f}x faster than --jobs 1)")
    print(
        f"incremental: first {base:.1f} s, then 3 late submissions added in {added:.1f} s "
        f"({added / full[2]:.0%} of the full run); score files identical to the full run: {same}"
    )
    print(f"scoring and report alone (sandbox report): {report_s:.2f} s")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    if not same:
        raise SystemExit("the incremental run's score files differ from the full run's")


if __name__ == "__main__":
    main()
