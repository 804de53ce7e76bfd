#!/bin/sh
# ./run_defense.sh INPUT_DIR OUTPUT_FILE
# /code is read-only: keep Python from writing __pycache__ next to the code. TF_CPP_MIN_LOG_LEVEL=2 keeps
# TensorFlow's start-up messages out of the log; oneDNN off: the same numbers as the host that trained it.
export PYTHONDONTWRITEBYTECODE=1 TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0 KERAS_BACKEND=tensorflow
exec python3 defense.py "$@"
