"""Adversarially trained Inception v3 (Kurakin et al., 2017): the paper's v3_adv, timm's inception_v3.tf_adv_in1k.

Classifies every 299x299 RGB PNG of INPUT_DIR and writes `name,label` lines, the label in the data set's numbering
(1..1000 for the NIPS 2017 sets: timm's class index + 1). The weights come from the mounted weights folder.

Usage: python3 defense.py INPUT_DIR OUTPUT_FILE
"""

from imagenet_io import run_defense

if __name__ == "__main__":
    run_defense("inception_v3.tf_adv_in1k")
