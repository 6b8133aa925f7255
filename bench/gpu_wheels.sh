#!/usr/bin/env bash
# The wheels the lent GPU machine lacks for `python -m bench.gpu_check`, for its CPython 3.12 on
# x86-64, downloaded here into gpu-wheels/ (git-ignored; it travels with the working tree through
# the device tool's `carry`, under its 64 MiB limit). That machine has torch 2.11, torchvision,
# numpy, numba, Pillow, PyYAML, tqdm, pytest and pytorch-lightning, but no pydantic (the configs the
# trainer imports) and no lightly (the peer). `make gpu-wheels` runs this after installing the
# bench extras, whose versions it takes. On the machine (its torch is python3's; the whole
# command is in docs/benchmarks.md):
#   python3 -m pip install --no-index --no-deps --target gpu-wheels/site gpu-wheels/*.whl
#   PYTHONPATH=gpu-wheels/site:. python3 -m bench.gpu_check --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}

# The version installed here, which the GPU machine is to run as rehearsed. A package missing here
# stops the script: an empty version would have pip fetch whatever "name==" finds (lightly 0.0.0,
# an empty placeholder, and the GPU run would lose its peer).
installed() {
    "$python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" \
        2>/dev/null || {
        echo "gpu_wheels.sh: $1 is not installed in $python; run 'make gpu-wheels'" >&2
        return 1
    }
}
pydantic=$(installed pydantic)
pydantic_core=$(installed pydantic-core)
lightly=$(installed lightly)

rm -rf gpu-wheels
# pydantic with its compiled core and the pure-Python packages it imports; lightly without its
# dependencies (what bench.gpu_check imports of it needs only torch, torchvision, numpy and PIL)
"$python" -m pip download --quiet --disable-pip-version-check --dest gpu-wheels \
    --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    "pydantic==$pydantic" "pydantic-core==$pydantic_core" \
    annotated-types typing-inspection "typing-extensions>=4.14" "lightly==$lightly"
du -sh gpu-wheels
ls gpu-wheels
