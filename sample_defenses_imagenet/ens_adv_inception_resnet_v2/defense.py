"""Ensemble adversarially trained Inception-ResNet v2 (Tramer et al., 2018): the paper's IRv2_adv-ens, timm's
inception_resnet_v2.tf_ens_adv_in1k.

Classifies every 299x299 RGB PNG of INPUT_DIR and writes `name,label` lines, the label in the data set's numbering
(1..1000 for the NIPS 2017 sets: timm's class index + 1). The weights come from the mounted weights folder.

Usage: python3 defense.py INPUT_DIR OUTPUT_FILE
"""

from imagenet_io import run_defense

if __name__ == "__main__":
    run_defense("inception_resnet_v2.tf_ens_adv_in1k")
