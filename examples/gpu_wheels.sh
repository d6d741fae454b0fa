#!/usr/bin/env bash
# The Python packages emvae needs that the lent GPU machines lack (mrcfile, starfile, astropy
# with pyerfa and astropy-iers-data, gemmi; the machine has torch, numpy, scipy, pandas, h5py,
# typer, rich, matplotlib, pillow, pyarrow), downloaded HERE as wheels for its Python 3.12 on
# x86-64 into .whl/ at the repository's root, which git ignores. About 16 MB; the device call
# then names .whl in `carry` and examples/gpu_check.sh installs them there.
#
#   bash examples/gpu_wheels.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
# one version of each (two stop the install there); these are the versions CI tests with
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl \
    mrcfile==1.5.4 starfile==0.5.13 astropy==8.0.2 pyerfa==2.0.1.5 \
    astropy-iers-data==0.2026.11.16.0.37.44 gemmi==0.7.5
ls -l .whl
