#!/bin/sh
# ./run_attack.sh INPUT_DIR OUTPUT_DIR EPSILON
# /code is read-only: keep Python from writing __pycache__ next to the code.
export PYTHONDONTWRITEBYTECODE=1
exec python3 attack.py "$@"
