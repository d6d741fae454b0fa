#!/usr/bin/env bash
# The check a session lent a GPU runs first (issue 34): `emvae bench gpu` with the set-up it
# needs, bounded to 8 minutes on one H100 including that set-up (docs/benchmarks.md, "GPU").
#
# Here, once:  bash examples/gpu_wheels.sh       (the wheels the device lacks, into .whl/)
# There:       the device tool's run, carry [".whl"], timeout_s 540, command:
#                  bash examples/gpu_check.sh "$OUT"
# It writes into OUT (at most 4 files, all of which come back): gpu_check.md (the tables),
# gpu_check.jsonl (one JSON line per result, written as each comes), gpu_check.log (the
# output) and nvidia_smi.txt. The simulated stack and the fits' folders go to $WORK
# (default /tmp/emvae_gpu_work), not OUT.
#
# Each section of `emvae bench gpu` has its own budget (emvae/gpucheck.py, Plan.budgets); the
# whole run is cut at GPU_CHECK_SECONDS (default 470 s) from this script's start. A cut or
# failed section leaves every line written before it.
#
# A CPU smoke run of the same script (seconds; its figures mean nothing):
#     DEVICE=cpu TINY=1 bash examples/gpu_check.sh /tmp/gpu_smoke
set -uo pipefail
start=$SECONDS
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-gpu_check}}
work=${WORK:-/tmp/emvae_gpu_work}
limit=${GPU_CHECK_SECONDS:-470}
py=${PYTHON:-python3}
mkdir -p "$out" "$work"
if compgen -G "$root/.whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$root"/.whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root:$root/cli${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ! "$py" -c "import emvae_cli.main" 2> "$out/gpu_check.log"; then
    echo "emvae does not import here: carry the wheels of examples/gpu_wheels.sh" >&2
    cat "$out/gpu_check.log" >&2
    exit 1
fi
nvidia-smi > "$out/nvidia_smi.txt" 2>&1 || echo "no nvidia-smi" > "$out/nvidia_smi.txt"
left=$((limit - (SECONDS - start)))
echo "set-up took $((SECONDS - start)) s; the check may take ${left} s" | tee -a "$out/gpu_check.log"
# SIGINT first (Python stops where it is; the lines written stay), SIGKILL 10 s later
timeout --signal=INT --kill-after=10 "$left" \
    "$py" -m emvae_cli.main bench gpu -o "$out" --work "$work" --device "${DEVICE:-cuda}" \
    ${TINY:+--tiny} 2>&1 | tee -a "$out/gpu_check.log"
status=${PIPESTATUS[0]}
echo "exit status $status after $((SECONDS - start)) s" | tee -a "$out/gpu_check.log"
cat "$out/gpu_check.md" 2> /dev/null
exit "$status"
