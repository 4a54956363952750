#!/usr/bin/env bash
# `make gpu-check`: everything that needs a real GPU, in one run of at most ~8 minutes, on a
# machine that has a CUDA GPU, nvcc and a CUDA build of torch but maybe no internet:
#
#   build   the extension with CUDA (GFFMERGE_CUDA=ON) by CMake against the torch found there,
#           arch list = the GPU's compute capability; the module is staged in
#           build/gpu-check/site/gffmerge_ext (symlinks to the sources + the built _C): nothing
#           is installed and the source tree gets no binary;
#   tests   pytest -m cuda on the op test files (tests/test_ops*.py): the CUDA kernels against
#           the float64 reference, opcheck, streams, devices; and tests/test_collect_cuda.py:
#           progressive and force-aware statistics and a progressive merge, cuda against cpu;
#   gram    benchmarks/bench_gram.py --device cuda           -> $RESULTS/gram_cuda.md, .csv
#   edge    benchmarks/bench_edge_gram.py --device cuda on a small grid
#                                                            -> $RESULTS/edge_gram_cuda.md, .csv
#   e2e     tools/gpu_e2e.py: shipped GNS/PaiNN measured + solved on cuda vs cpu
#                                                            -> $RESULTS/gpu_e2e.md, .csv
#   measure benchmarks/bench_measure.py --device cuda --quick (statistics / forward)
#                                                            -> $RESULTS/measure_cuda.md, .csv
#
# A failing step does not stop the later ones (a failed build still lets the tests report why
# the kernels are missing); the script exits non-zero when any step failed. Each step's output
# goes to $LOGS/<step>.log and the verdicts to $LOGS/summary.md, so one run gives everything.
#
# The interpreter: $GPU_PYTHON if set, else the first of `python3` and .venv-cuda/bin/python
# whose torch sees a CUDA device. Nothing is pip-installed: that interpreter needs torch
# (CUDA), pybind11, cmake (its own, else cmake on PATH) and, for the steps that use them,
# pytest + hypothesis + numpy (tests) and gffmerge's own dependencies (edge benchmark). A
# toolkit whose nvcc comes without the cuBLAS/cuSOLVER headers borrows those of torch's
# nvidia wheels (as tools/cuda_check.sh does).
#
# Environment: GPU_PYTHON, NVCC (default $CUDACXX, /usr/local/cuda/bin/nvcc, nvcc on PATH),
# GPU_CHECK_RESULTS (default benchmarks/results), GPU_CHECK_LOGS (default
# $GPU_CHECK_RESULTS/gpu_check), GPU_CHECK_BUILD (default build/gpu-check), GPU_CHECK_BUDGET
# (seconds for all steps, default 470), GPU_CHECK_STEPS (the steps to run, default all:
# "build tests e2e gram measure edge"), JOBS (default: the number of cores).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RESULTS=$(mkdir -p "${GPU_CHECK_RESULTS:-$ROOT/benchmarks/results}" && cd "${GPU_CHECK_RESULTS:-$ROOT/benchmarks/results}" && pwd)
LOGS=${GPU_CHECK_LOGS:-$RESULTS/gpu_check}
BUILD=${GPU_CHECK_BUILD:-$ROOT/build/gpu-check}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac  # the steps run in other folders
BUDGET=${GPU_CHECK_BUDGET:-470}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
STEPS=" ${GPU_CHECK_STEPS:-build tests e2e gram measure edge} "
mkdir -p "$LOGS"
SUMMARY=$LOGS/summary.md
T0=$SECONDS
FAILED=()

say() { printf '[gpu-check %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
verdict() {  # step, status, detail
  printf '| %s | %s | %ss | %s |\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"
  say "$1: $2 ($4)"
  [ "$2" = ok ] || FAILED+=("$1")
}
# run_step NAME CAP_SECONDS CMD...: runs CMD under a timeout of min(CAP, time left), output to
# $LOGS/NAME.log; records the verdict and never aborts the script.
run_step() {
  local name=$1 cap=$2; shift 2
  case $STEPS in *" $name "*) ;; *) say "$name: skipped (not in GPU_CHECK_STEPS)"; return 0 ;; esac
  local left=$((BUDGET - (SECONDS - T0))) t1=$SECONDS rc
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    verdict "$name" FAILED 0 "not started: the ${BUDGET}s budget is spent"
    return 1
  fi
  say "$name (up to ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    verdict "$name" ok "$((SECONDS - t1))" "log: $name.log"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    verdict "$name" FAILED "$((SECONDS - t1))" "timed out after ${limit}s; log: $name.log"
  else
    verdict "$name" FAILED "$((SECONDS - t1))" "exit $rc; last line: $(tail -n 1 "$LOGS/$name.log" | cut -c1-200)"
  fi
  return "$rc"
}
finish() {
  local total=$((SECONDS - T0))
  if [ ${#FAILED[@]} -eq 0 ]; then
    echo "" >> "$SUMMARY"; echo "All steps passed in ${total}s." >> "$SUMMARY"
    say "OK: every step passed in ${total}s (summary: $SUMMARY)"
    exit 0
  fi
  echo "" >> "$SUMMARY"; echo "Failed: ${FAILED[*]} (${total}s)." >> "$SUMMARY"
  say "FAILED steps: ${FAILED[*]} (summary: $SUMMARY)"
  exit 1
}

# ---- the interpreter with a CUDA torch (nothing else can run without one) ---------------------
# One interpreter start per candidate. Usable: exit 0 and the line
#   torch VERSION cuda CUDA_VERSION devices N|TORCH_DIR|MAJOR.MINOR|PYTHON_VERSION|GPU NAME
# else exit 1 and why not.
probe() {
  "$1" - <<'EOF' 2>&1 | tail -n 1
import os, platform, sys
try:
    import torch
except Exception as exc:
    print(f"no torch ({type(exc).__name__}: {exc})"); sys.exit(1)
desc = f"torch {torch.__version__} cuda {torch.version.cuda} devices {torch.cuda.device_count()}"
if not torch.cuda.is_available():
    print(desc + " (torch.cuda.is_available() is False)"); sys.exit(1)
print("|".join([desc, os.path.dirname(torch.__file__),
                "%d.%d" % torch.cuda.get_device_capability(0), platform.python_version(),
                torch.cuda.get_device_name(0)]))
EOF
}
if [ -n "${GPU_PYTHON:-}" ]; then CANDIDATES=("$GPU_PYTHON")
else CANDIDATES=(python3 "$ROOT/.venv-cuda/bin/python"); fi
PY="" TRIED=""
for c in "${CANDIDATES[@]}"; do
  if ! command -v "$c" >/dev/null 2>&1; then TRIED+="$c: absent; "; continue; fi
  # Absolute, but not through symlinks: a venv's python is a link to the base interpreter.
  p=$(command -v "$c"); case $p in /*) ;; *) p=$PWD/$p ;; esac
  if what=$(probe "$p"); then PY=$p; break; fi
  TRIED+="$c: $what; "
done
{
  echo "# make gpu-check"
  echo ""
  echo "Started $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname) in $ROOT."
} > "$SUMMARY"
if [ -z "$PY" ]; then
  echo "Failed before any step: no Python with a CUDA torch (${TRIED%; })." >> "$SUMMARY"
  echo "[gpu-check] FAILED: no Python whose torch sees a CUDA device (${TRIED%; }); install a CUDA build of torch there or set GPU_PYTHON to an interpreter that has one" >&2
  exit 1
fi
IFS='|' read -r TORCH_DESC TORCH_DIR ARCH PY_VERSION GPU <<< "$what"
SMI=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
{
  echo ""
  echo "- python: $PY ($PY_VERSION)"
  echo "- $TORCH_DESC; GPU: ${SMI:-$GPU} (sm ${ARCH})"
  echo "- budget: ${BUDGET}s for all steps; $JOBS build jobs"
  echo ""
  echo "| step | result | time | detail |"
  echo "|---|---|---|---|"
} >> "$SUMMARY"
say "python $PY: $TORCH_DESC, sm $ARCH"

# ---- build --------------------------------------------------------------------------------------
NVCC=${NVCC:-${CUDACXX:-}}
if [ -z "$NVCC" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc
  else NVCC=$(command -v nvcc || true); fi
fi
# The interpreter's own cmake/ninja first (pip's cmake is the recent one: CUDA 20 with nvcc 13
# needs CMake >= 3.31), then PATH.
CMAKE=$(dirname "$PY")/cmake; [ -x "$CMAKE" ] || CMAKE=$(command -v cmake || true)
NINJA=$(dirname "$PY")/ninja; [ -x "$NINJA" ] || NINJA=$(command -v ninja || true)
SITE=$BUILD/site

# A toolkit with nvcc but without the cuBLAS/cuSOLVER development files: one CUDA root of
# symlinks, nvcc from the toolkit, headers and libraries also from torch's nvidia wheels
# (FindCUDAToolkit and torch's CMake want a single toolkit directory).
cuda_root() {
  local home=$1 R=$BUILD/cuda-root wheels; wheels=$(dirname "$TORCH_DIR")/nvidia
  ls "$wheels"/*/include/cusolverDn.h > /dev/null 2>&1 ||
    { echo "no cusolverDn.h in $home nor in torch's wheels ($wheels); install the CUDA toolkit's cuBLAS/cuSOLVER development files"; return 1; }
  echo "toolkit $home has no cuSOLVER headers: merged CUDA root $R (+ $wheels)"
  mkdir -p "$R/include" "$R/lib"
  for d in bin nvvm targets; do [ -e "$home/$d" ] && ln -s "$home/$d" "$R/$d"; done
  for f in "$home"/include/* "$wheels"/*/include/*; do
    [ -e "$R/include/$(basename "$f")" ] || ln -s "$f" "$R/include/"
  done
  for f in "$home"/lib64/* "$home"/lib/* "$wheels"/*/lib/*; do
    [ -e "$f" ] && { [ -e "$R/lib/$(basename "$f")" ] || ln -s "$f" "$R/lib/"; }
  done
  for f in "$R"/lib/*.so.*; do
    [ -e "${f%%.so.*}.so" ] || ln -s "$(basename "$f")" "${f%%.so.*}.so"
  done
  ln -s lib "$R/lib64"
}

build() {
  [ -n "$NVCC" ] && [ -x "$NVCC" ] || { echo "no nvcc (looked at \$NVCC, \$CUDACXX, /usr/local/cuda/bin/nvcc, PATH); set NVCC"; return 1; }
  [ -n "$CMAKE" ] || { echo "no cmake on PATH or next to $PY; install cmake >= 3.25"; return 1; }
  "$PY" -m pybind11 --cmakedir > /dev/null || { echo "pybind11 is not installed for $PY"; return 1; }
  local gen=(-G "Unix Makefiles") tool=(make -j"$JOBS")
  [ -n "$NINJA" ] && gen=(-G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA") && tool=("$NINJA" -j"$JOBS")
  "$NVCC" --version | tail -n 2
  rm -rf "$BUILD"
  local nvcc=$NVCC toolkit=() home; home=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
  if ! ls "$home"/include/cusolverDn.h "$home"/targets/*/include/cusolverDn.h > /dev/null 2>&1
  then
    cuda_root "$home" || return 1
    nvcc=$BUILD/cuda-root/bin/nvcc
    toolkit=(-DCUDAToolkit_ROOT="$BUILD/cuda-root" -DCUDA_TOOLKIT_ROOT_DIR="$BUILD/cuda-root")
  fi
  TORCH_CUDA_ARCH_LIST=$ARCH "$CMAKE" -S "$ROOT" -B "$BUILD/cmake" "${gen[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$PY" -DGFFMERGE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc" "${toolkit[@]}" ||
    { echo "CMake configure failed (GFFMERGE_CUDA=ON)"; return 1; }
  (cd "$BUILD/cmake" && "${tool[@]}") || { echo "compilation failed"; return 1; }
  local so; so=$(ls "$BUILD"/cmake/_C*.so 2>/dev/null | head -n 1)
  [ -n "$so" ] || { echo "no _C*.so in $BUILD/cmake"; return 1; }
  rm -rf "$SITE" && mkdir -p "$SITE/gffmerge_ext"
  for f in "$ROOT"/gffmerge_ext/*.py; do ln -s "$f" "$SITE/gffmerge_ext/"; done
  cp "$so" "$SITE/gffmerge_ext/"
  # The module's RPATH ($ORIGIN/../torch/lib) does not reach torch from the staging folder;
  # LD_LIBRARY_PATH does (libtorch_cuda_linalg is not loaded by `import torch`).
  cd "$BUILD" && LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PYTHONPATH="$SITE" "$PY" -c '
import os, sys
import gffmerge_ext as e
# An editable install of gffmerge in this interpreter would shadow the staged package.
assert e.__file__.startswith(os.environ["SITE"]), f"imported {e.__file__}, not the staged build"
info = e.build_info()
assert e.extension_available() and info["cuda"], (e.load_error(), info)
print("built:", {k: info[k] for k in ("cuda", "cuda_archs", "torch_version", "compiler")})
# An error message with numbers in it, formatted inside the module: a toolchain that links
# libstdc++ statically and exports it crashed right here (CMakeLists.txt: --exclude-libs).
import torch
for dev in ("cpu", "cuda"):
    acc = torch.zeros(2, 2, dtype=torch.float64, device=dev)
    try:
        e.gram_(acc, torch.ones(3, 2, device=dev), torch.tensor([0, 7], device=dev), backend="ext")
    except RuntimeError as exc:
        assert "index[1] = 7 is out of range" in str(exc), exc
    else:
        raise AssertionError(f"gram_ on {dev} accepted an out-of-range index")
print("error messages format on cpu and cuda")'
}
export -f cuda_root build
export PY ROOT BUILD SITE NVCC CMAKE NINJA JOBS ARCH TORCH_DIR
run_step build 270 bash -c build

# ---- tests and benchmarks against the staged module --------------------------------------------
# Run from build/gpu-check, not the repository root: `python -m`/`-c` put the working directory
# first on sys.path, and the source tree's gffmerge_ext (no _C) would shadow the staged one.
mkdir -p "$BUILD"
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$SITE:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
# pytest-xdist where installed: a test that crashes the interpreter (a segfault in a kernel) then
# fails alone, its worker is replaced, and the other tests still report.
XDIST=(); "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 4)
run_step tests 150 env -C "$BUILD" "$PY" -m pytest -m cuda -q -p no:cacheprovider "${XDIST[@]}" -rfE \
  --junitxml="$LOGS/tests.xml" "$ROOT"/tests/test_ops_cuda.py "$ROOT"/tests/test_ops.py \
  "$ROOT"/tests/test_ops_solve.py "$ROOT"/tests/test_ops_dense_csr.py \
  "$ROOT"/tests/test_ops_sparse_rows.py "$ROOT"/tests/test_collect_cuda.py
# Shipped GNS and PaiNN measured and merged on cuda against cpu (needs vesin for the graphs).
run_step e2e 120 env -C "$BUILD" "$PY" "$ROOT"/tools/gpu_e2e.py --out "$RESULTS/gpu_e2e"
run_step gram 90 env -C "$BUILD" "$PY" "$ROOT"/benchmarks/bench_gram.py --device cuda \
  --out "$RESULTS/gram_cuda"
run_step measure 120 env -C "$BUILD" "$PY" "$ROOT"/benchmarks/bench_measure.py --device cuda \
  --quick --out "$RESULTS/measure_cuda"
# Four cases x three variants, each a fresh process (~5 s of start-up each); 3.2M edge rows.
run_step edge 200 env -C "$BUILD" "$PY" "$ROOT"/benchmarks/bench_edge_gram.py --device cuda \
  --repeats 3 --dims 64 128 --degrees 32 --atoms 100000 --max-gb 60 --out "$RESULTS"
finish
