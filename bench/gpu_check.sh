#!/usr/bin/env bash
# One shot on a lent accelerator machine: the accelerator check under a hard timeout.
#
#   bash bench/gpu_check.sh [more options for python -m bench --accelerator-check]
#
# Runs from this source checkout with nothing installed (PYTHONPATH=.) and writes
# <backend>-<date>.md/.json/.png and accelerator-check.log into $OUT when it is set, else
# into bench/results/. The check starts no new measurement after --budget-s (300 s) and
# rewrites its report after every shape; the hard timeout (HARD_TIMEOUT, 360 s = the issue's
# 6 minutes) kills it if a compile hangs, leaving what was measured. Exit status: 0 all
# good, 1 an implementation is wrong or crashed (the log names it and the geometry), 124 the
# hard timeout.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out="${OUT:-bench/results}"
mkdir -p "$out"
log="$out/accelerator-check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX would reserve 75% of the GPU when it starts; torch is timed on the same GPU.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
} | tee "$log"
timeout -k 15 "${HARD_TIMEOUT:-360}" python -m bench --accelerator-check --out "$out" "$@" 2>&1 |
  tee -a "$log"
status=${PIPESTATUS[0]}
echo "exit status $status (1: an implementation is wrong or crashed; 124: hard timeout)" | tee -a "$log"
exit "$status"
