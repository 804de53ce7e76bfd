"""MI-FGSM (Dong et al., 2018) on a holdout model: a black-box (transfer) attack on every shipped defense.

k = 10 steps of epsilon / k along the sign of the accumulated gradient, decay 1.0 (the paper's values); the method is
momentum.py's `mi_fgsm`, shared with the DI, TI and ensemble samples. The source model is whatever model.py and
model.pt hold: holdout_b's in mi_fgsm, the adversarially trained holdout_b_adv's in mi_fgsm_adv_holdout, which ships
this file unchanged. The command line, the images and the batches are sample_io.py's.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

from momentum import mi_fgsm
from sample_io import run_attack

if __name__ == "__main__":
    run_attack(mi_fgsm)
