#!/bin/sh
# ./run_defense.sh INPUT_DIR OUTPUT_FILE
# /code is read-only: keep Python from writing __pycache__ next to the code.
export PYTHONDONTWRITEBYTECODE=1
exec python3 defense.py "$@"
