"""Reproduces the findings of "Ensemble Adversarial Training" (Tramèr et al., ICLR 2018) on Fashion-MNIST, through
the sandbox with real containers.

For each defense (base_torch, adv_torch, ens_adv_torch) and each epsilon (16 and 32, pixel units): the clean error
(noop), the white-box errors of Step-LL, R+Step-LL, FGSM and I-FGSM (computed on that defense's own weights), and
the maximum error over black-box attacks transferred from holdout models that no defense was trained with
(Step-LL, R+Step-LL, FGSM and I-FGSM on holdout_b, FGSM on base_keras). A submission is never told which defense it
faces, so each white-box (attack, defense) pair is its own submission: the sample's code with that defense's
model.py and weights (`fgsm__vs__adv_torch`); each black-box one is the sample's code with a holdout's files
(`fgsm__from__holdout_b`). The newer transfer attacks (MI-FGSM and its DI, TI and ensemble variants, the paper's
"subsequent work") run as they ship, from their holdout models, for the fifth finding; "Max. Black-Box" stays the
worst of the older ones, as in the paper's Table 4. One competition per epsilon.

    python benchmarks/paper_findings.py [--images N] [--out DIR] [--jobs 2]

Writes findings.md and findings.json (and the two run folders, run_eps16 and run_eps32) into DIR and prints the
table. An existing DIR is resumed like any sandbox run folder: use a new one after retraining a model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox import Limits, RunOptions, run_competition
from sandbox.bundled import default_dataset_dir
from sandbox.competition import Events
from sandbox.dataset import subset_dataset
from sandbox.errors import DataSetError

REPO = Path(__file__).resolve().parents[1]
ATTACKS = REPO / "sample_attacks"
DEFENSES = REPO / "sample_defenses"

DEFENSE_IDS = ("base_torch", "adv_torch", "ens_adv_torch")
# Column name -> the sample whose code computes it; every one of them reads model.py/model.pt, so any torch
# model's files can be swapped in.
WHITE_BOX = {"Step-LL": "step_ll", "R+Step-LL": "rand_step_ll", "FGSM": "fgsm", "I-FGSM": "iter_fgsm"}
# Holdout models: name -> the folder that holds their model.py and weights (holdout_b ships in its attacks).
TORCH_HOLDOUTS = {"holdout_b": ATTACKS / "step_ll_holdout"}
# Samples computed on a holdout as they ship (their own framework and weights).
SHIPPED_BLACK_BOX = {"FGSM": ("fgsm_keras", "base_keras")}
# The transfer attacks of the work that followed the paper, as they ship: sample -> its source model(s).
NEWER_BLACK_BOX = {
    "mi_fgsm": "holdout_b",
    "di_mi_fgsm": "holdout_b",
    "ti_mi_fgsm": "holdout_b",
    "ens_mi_fgsm": "holdout_b+holdout_b_adv",
    "mi_fgsm_adv_holdout": "holdout_b_adv",
}
# The older single-step transfer attacks (the others are R+Step-LL, one step too, and I-FGSM).
SINGLE_STEP = ("Step-LL", "FGSM")
# Finding 5: how many points of black-box error the newer attacks must add on ens_adv_torch.
STRONGER_BY = 3.0
EPSILONS = (16, 32)
# The paper's numbers quoted in docs/paper_findings.md, for the text (top-1 error %, ImageNet, Inception v3 models).
PAPER = {
    "adv Step-LL -> R+Step-LL (white-box)": "26.6% -> 64.8%",
    "max black-box: base / adv / ens_adv": "51.2% / 40.8% / 34.0%",
    "stronger transfer attacks": "subsequent work 'could significantly enhance transferability and reduce the "
    "accuracy of our models' (abstract; no number there)",
}


@dataclass(frozen=True)
class AttackCell:
    """What one attack submission of the run measures."""

    submission_id: str
    attack: str  # a column of WHITE_BOX, or the black-box attack's name
    defense: str | None  # the defense it attacks white-box; None for a black-box (transfer) attack
    source_model: str
    newer: bool = False  # one of the transfer attacks that followed the paper (finding 5)


def _swap_model(sample: Path, model_dir: Path, dest: Path, source_model: str) -> None:
    """Copies the sample's code, puts `model_dir`'s model.py and model.pt in place of its own."""
    shutil.copytree(sample, dest)
    for name in ("model.py", "model.pt"):
        shutil.copyfile(model_dir / name, dest / name)
    metadata = json.loads((dest / "metadata.json").read_text())
    metadata.update({"name": dest.name, "source_model": source_model})
    (dest / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def build_submissions(root: Path) -> tuple[Path, Path, Path, list[AttackCell]]:
    """Folders of attack, targeted attack (empty) and defense submissions, and what each attack measures."""
    attacks, targeted, defenses = root / "attacks", root / "targeted_attacks", root / "defenses"
    for folder in (attacks, targeted, defenses):
        folder.mkdir(parents=True)
    cells = [AttackCell("noop", "Clean", None, "none")]
    shutil.copytree(ATTACKS / "noop", attacks / "noop")
    for defense in DEFENSE_IDS:
        shutil.copytree(DEFENSES / defense, defenses / defense)
        for column, sample in WHITE_BOX.items():
            sub_id = f"{sample}__vs__{defense}"
            _swap_model(ATTACKS / sample, DEFENSES / defense, attacks / sub_id, defense)
            cells.append(AttackCell(sub_id, column, defense, defense))
    for holdout, model_dir in TORCH_HOLDOUTS.items():
        for column, sample in WHITE_BOX.items():
            sub_id = f"{sample}__from__{holdout}"
            _swap_model(ATTACKS / sample, model_dir, attacks / sub_id, holdout)
            cells.append(AttackCell(sub_id, column, None, holdout))
    for column, (sample, holdout) in SHIPPED_BLACK_BOX.items():
        sub_id = f"{sample}__from__{holdout}"
        shutil.copytree(ATTACKS / sample, attacks / sub_id)
        cells.append(AttackCell(sub_id, column, None, holdout))
    for sample, sources in NEWER_BLACK_BOX.items():
        sub_id = f"{sample}__from__{sources}"
        shutil.copytree(ATTACKS / sample, attacks / sub_id)
        cells.append(AttackCell(sub_id, sample, None, sources, newer=True))
    return attacks, targeted, defenses, cells


class PrintEvents(Events):
    def message(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def warning(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def phase(self, name: str, total: int, already_done: int) -> None:
        print(f"{name}: {total} pieces", file=sys.stderr, flush=True)


def error_table(results: dict, cells: list[AttackCell]) -> tuple[dict, dict, dict]:
    """Top-1 error % per defense: Clean, each white-box attack, max black-box (older attacks); and every older and
    every newer black-box attack's error."""
    n = results["n_images"]
    correct = results["matrices"]["correct_on_attacks"]

    def error(sub_id: str, defense: str) -> float:
        return round(100.0 * (n - correct[sub_id][defense]) / n, 1)

    table: dict[str, dict[str, float]] = {d: {} for d in DEFENSE_IDS}
    black_box: dict[str, dict[str, float]] = {}
    newer: dict[str, dict[str, float]] = {}
    for cell in cells:
        if cell.attack == "Clean":
            for defense in DEFENSE_IDS:
                table[defense]["Clean"] = error(cell.submission_id, defense)
        elif cell.defense is not None:
            table[cell.defense][cell.attack] = error(cell.submission_id, cell.defense)
        else:
            errors = {d: error(cell.submission_id, d) for d in DEFENSE_IDS}
            (newer if cell.newer else black_box)[cell.submission_id] = errors
    for defense in DEFENSE_IDS:
        table[defense]["Max. Black-Box"] = max(errors[defense] for errors in black_box.values())
    return table, black_box, newer


def _strongest(attacks: dict[str, dict[str, float]], defense: str) -> tuple[str, float]:
    """The attack with the highest error on `defense` (the first listed on a tie) and that error."""
    name = max(attacks, key=lambda sub_id: attacks[sub_id][defense])
    return name, attacks[name][defense]


def judge_stronger_transfer(
    black_box: dict[int, dict], newer: dict[int, dict], cells: list[AttackCell], defense: str = "ens_adv_torch"
) -> dict:
    """Finding 5, at every epsilon: the strongest newer transfer attack against the strongest older one, on the
    ensemble adversarially trained model, with the strongest older single-step one beside them."""
    single_step = {c.submission_id for c in cells if c.defense is None and not c.newer and c.attack in SINGLE_STEP}
    by_epsilon = {}
    for eps in black_box:
        old_name, old = _strongest(black_box[eps], defense)
        step_name, step = _strongest({k: v for k, v in black_box[eps].items() if k in single_step}, defense)
        new_name, new = _strongest(newer[eps], defense)
        gain = round(new - old, 1)
        by_epsilon[eps] = {
            "holds": gain >= STRONGER_BY,
            "numbers": {
                "ens_adv best older": f"{old}% ({old_name})",
                "best older single-step": f"{step}% ({step_name})",
                "best newer": f"{new}% ({new_name})",
                "gain": f"{gain:+.1f} points",
            },
        }
    return {
        "statement": "5. Stronger transfer attacks (momentum, input diversity, translation invariance, ensembles of "
        "sources) raise the ensemble adversarially trained model's black-box error significantly.",
        "rule": f"ens_adv_torch's error under the strongest newer transfer attack is at least {STRONGER_BY:.0f} "
        "points above its error under the strongest older one (Max. Black-Box)",
        "holds": all(r["holds"] for r in by_epsilon.values()),
        "by_epsilon": by_epsilon,
    }


def check_findings(tables: dict[int, dict]) -> list[dict]:
    """The paper's four claims, each judged at every epsilon on the measured errors, with the rule spelled out."""
    checks = []

    def judge(rule: str, statement: str, test) -> None:
        by_eps = {eps: test(t) for eps, t in tables.items()}
        checks.append(
            {
                "statement": statement,
                "rule": rule,
                "holds": all(ok for ok, _ in by_eps.values()),
                "by_epsilon": {eps: {"holds": ok, "numbers": numbers} for eps, (ok, numbers) in by_eps.items()},
            }
        )

    judge(
        "adv_torch's white-box Step-LL and FGSM errors are each at most half of base_torch's",
        "1. Adversarial training greatly lowers the white-box single-step error.",
        lambda t: (
            all(t["adv_torch"][a] <= 0.5 * t["base_torch"][a] for a in ("Step-LL", "FGSM")),
            {f"{a} base/adv": f"{t['base_torch'][a]}% / {t['adv_torch'][a]}%" for a in ("Step-LL", "FGSM")},
        ),
    )
    judge(
        "adv_torch's white-box R+Step-LL error is at least 10 points above its Step-LL error",
        "2. R+Step-LL raises the adversarially trained model's error well above Step-LL (gradient masking).",
        lambda t: (
            t["adv_torch"]["R+Step-LL"] >= t["adv_torch"]["Step-LL"] + 10.0,
            {"adv Step-LL -> R+Step-LL": f"{t['adv_torch']['Step-LL']}% -> {t['adv_torch']['R+Step-LL']}%"},
        ),
    )
    judge(
        "ens_adv_torch's max black-box error is below adv_torch's",
        "3. Under black-box transfer, ensemble adversarial training beats adversarial training.",
        lambda t: (
            t["ens_adv_torch"]["Max. Black-Box"] < t["adv_torch"]["Max. Black-Box"],
            {
                "max black-box adv/ens_adv": (
                    f"{t['adv_torch']['Max. Black-Box']}% / {t['ens_adv_torch']['Max. Black-Box']}%"
                )
            },
        ),
    )
    judge(
        "adv_torch's max black-box error is below base_torch's",
        "4. Under black-box transfer, adversarial training beats the undefended model.",
        lambda t: (
            t["adv_torch"]["Max. Black-Box"] < t["base_torch"]["Max. Black-Box"],
            {"max black-box base/adv": f"{t['base_torch']['Max. Black-Box']}% / {t['adv_torch']['Max. Black-Box']}%"},
        ),
    )
    return checks


COLUMNS = ("Clean", *WHITE_BOX, "Max. Black-Box")


def render_markdown(
    n_images: int, tables: dict[int, dict], black_box: dict[int, dict], newer: dict[int, dict], checks: list[dict]
) -> str:
    lines = [
        f"# Ensemble Adversarial Training on Fashion-MNIST: top-1 error (%), {n_images} images",
        "",
        "Layout of Table 4 of Tramèr et al. (2018): white-box attacks use the defense's own weights; the black-box",
        "column is the worst of the transfer attacks from holdout models (listed below). Epsilon in pixel units.",
        "",
        "| eps | defense | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for eps, table in tables.items():
        for defense in DEFENSE_IDS:
            row = table[defense]
            lines.append(f"| {eps} | {defense} | " + " | ".join(f"{row[c]:.1f}" for c in COLUMNS) + " |")
    lines += ["", "Black-box (transfer) attacks, error (%) per defense:", ""]
    lines += ["| eps | attack | " + " | ".join(DEFENSE_IDS) + " |", "|---|---|" + "---:|" * len(DEFENSE_IDS)]
    for eps, attacks in black_box.items():
        for sub_id, errors in attacks.items():
            lines.append(f"| {eps} | {sub_id} | " + " | ".join(f"{errors[d]:.1f}" for d in DEFENSE_IDS) + " |")
    lines += ["", "Newer black-box (transfer) attacks (finding 5), error (%) per defense:", ""]
    lines += ["| eps | attack | " + " | ".join(DEFENSE_IDS) + " |", "|---|---|" + "---:|" * len(DEFENSE_IDS)]
    for eps, attacks in newer.items():
        for sub_id, errors in attacks.items():
            lines.append(f"| {eps} | {sub_id} | " + " | ".join(f"{errors[d]:.1f}" for d in DEFENSE_IDS) + " |")
    lines += ["", "## Findings", ""]
    for check in checks:
        verdict = "holds" if check["holds"] else "does not hold"
        numbers = "; ".join(
            f"eps {eps}: " + ", ".join(f"{k} {v}" for k, v in r["numbers"].items()) + ("" if r["holds"] else " (fails)")
            for eps, r in check["by_epsilon"].items()
        )
        lines.append(f"- {check['statement']} **{verdict}** ({check['rule']}): {numbers}.")
    return "\n".join(lines) + "\n"


def run_findings(n_images: int, out: Path, jobs: int = 2, epsilons: tuple[int, ...] = EPSILONS) -> dict:
    """Runs one competition per epsilon and writes findings.md and findings.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "inputs"  # the data set stays (the run folders name it); the submissions go at the end
    shutil.rmtree(work, ignore_errors=True)
    try:
        dataset = subset_dataset(default_dataset_dir(), work / "dataset", n_images)
    except DataSetError as exc:
        raise SystemExit(f"--images {n_images}: {exc}") from None
    attacks, targeted, defenses, cells = build_submissions(work / "submissions")
    tables, black_box, newer, runs = {}, {}, {}, {}
    for eps in epsilons:
        started = time.monotonic()
        options = RunOptions(
            attacks=(attacks,),
            targeted_attacks=(targeted,),
            defenses=(defenses,),
            dataset=dataset,
            epsilon=(eps,),
            out=out / f"run_eps{eps}",
            batch_size=max(100, n_images),  # one piece per attack: start-up is paid once
            defense_batch_size=max(1000, 6 * n_images),
            jobs=jobs,
            limits=Limits(cpus=1.0),
        )
        result = run_competition(options, PrintEvents())
        if not result.complete:
            failed = {k: v["last_error"] for k, v in result.results["failures"].items() if v["pieces_failed"]}
            left_out = [lo.error for lo in result.left_out]
            raise SystemExit(f"eps {eps}: the run did not complete: failed {failed}, left out {left_out}")
        tables[eps], black_box[eps], newer[eps] = error_table(result.results, cells)
        runs[eps] = {"out": str(result.out), "wall_s": round(time.monotonic() - started, 1)}
        print(f"eps {eps}: {len(cells)} attacks x {len(DEFENSE_IDS)} defenses in {runs[eps]['wall_s']} s", flush=True)
    shutil.rmtree(work / "submissions")
    checks = [*check_findings(tables), judge_stronger_transfer(black_box, newer, cells)]
    markdown = render_markdown(n_images, tables, black_box, newer, checks)
    findings = {
        "n_images": n_images,
        "epsilons": list(epsilons),
        "columns": list(COLUMNS),
        "error_percent": tables,
        "black_box_error_percent": black_box,
        "newer_black_box_error_percent": newer,
        "findings": checks,
        "paper": PAPER,
        "runs": runs,
        "attacks": [vars(c) for c in cells],
    }
    (out / "findings.md").write_text(markdown)
    (out / "findings.json").write_text(json.dumps(findings, indent=2) + "\n")
    print(markdown)
    return findings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="the first N images of the shipped data set")
    parser.add_argument("--out", type=Path, default=None, help="default: a new folder under runs/")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / f"paper-findings-{time.strftime('%Y%m%d-%H%M%S')}"
    run_findings(args.images, out, args.jobs)


if __name__ == "__main__":
    main()
