#!/usr/bin/env bash
# `make test`: set-up, ruff, the CUDA compile check and the test suite.
#
# The CUDA compile check (tools/cuda_check.sh: mostly installing a CUDA torch into
# .venv-cuda, then nvcc) needs nothing from .venv, so it runs in the background beside the
# install, ruff and pytest; its log is printed when it ends. The command fails if either
# part fails. Environment: MAKE, CUDA_CHECK (default skip: no nvcc is not an error here),
# PYTEST_ARGS, and what the Makefile passes (PYTHON_BOOT, VENV).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MAKE=${MAKE:-make}
VENV=${VENV:-.venv}
LOG=$(mktemp -t gffmerge-cuda-check.XXXXXX)
trap 'rm -f "$LOG"' EXIT

$MAKE --no-print-directory cuda-check CUDA_CHECK="${CUDA_CHECK:-skip}" > "$LOG" 2>&1 &
CUDA_PID=$!
trap 'kill "$CUDA_PID" 2>/dev/null; rm -f "$LOG"' EXIT INT TERM
echo "[make test] CUDA compile check started in the background (pid $CUDA_PID)"

rc=0
$MAKE --no-print-directory install lint || rc=$?
if [ "$rc" = 0 ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pytest ${PYTEST_ARGS:-} || rc=$?
fi

if [ "$rc" != 0 ]; then
  kill "$CUDA_PID" 2>/dev/null
  wait "$CUDA_PID" 2>/dev/null
  echo "[make test] FAILED (set-up, ruff or pytest: exit $rc); the CUDA compile check was stopped"
  exit "$rc"
fi
echo "[make test] waiting for the CUDA compile check"
wait "$CUDA_PID"; cuda_rc=$?
sed 's/^/[cuda-check log] /' "$LOG"
if [ "$cuda_rc" != 0 ]; then
  echo "[make test] FAILED: the CUDA compile check (exit $cuda_rc; log above)"
  exit "$cuda_rc"
fi
echo "[make test] OK"
