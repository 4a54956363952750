#!/usr/bin/env bash
# `make cuda-check`: compile the CUDA code on a machine without a GPU (nothing is run on one).
#
#  (a) nvcc -c of the torch-free kernels csrc/kernels/*.cu for sm_80 and sm_90, against the
#      cuBLAS/cuSOLVER headers unzipped from the pinned nvidia wheels into .cuda-headers/;
#  (b) the whole extension (GFFMERGE_CUDA=ON) built with CMake against a CUDA build of torch
#      in its own venv (.venv-cuda/, never the CPU .venv), through a merged CUDA root of
#      symlinks (nvcc from the local toolkit, libraries and headers from torch's nvidia wheels);
#      then the built module is imported under that torch and its CUDA kernels are looked up.
#
# Idempotent: the header cache and the venv carry stamp files, nvcc objects are rebuilt only
# when a kernel source is newer, and the CMake build is incremental (Ninja).
#
# Environment: NVCC (default $CUDACXX, /usr/local/cuda/bin/nvcc, then nvcc on PATH);
# CUDA_CHECK=skip turns a missing nvcc into a skip (exit 0) instead of a failure;
# PYTHON_BOOT (python3), TORCH_CUDA_SPEC (torch==2.14.1), CUDA_VENV, CUDA_HEADERS_DIR,
# CUDA_CHECK_BUILD (build/cuda-check), JOBS (2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PYTHON_BOOT=${PYTHON_BOOT:-python3}
TORCH_CUDA_SPEC=${TORCH_CUDA_SPEC:-torch==2.14.1}
VENV=${CUDA_VENV:-$ROOT/.venv-cuda}
HEADERS=${CUDA_HEADERS_DIR:-$ROOT/.cuda-headers}
OUT=${CUDA_CHECK_BUILD:-$ROOT/build/cuda-check}
JOBS=${JOBS:-2}
ARCH_LIST="8.0;9.0"
NVCC_ARCH_FLAGS=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
# The versions torch 2.14.1+cu130 ships with; newer ones from PyPI also compile, but pin these.
HEADER_WHEELS=(nvidia-cublas==13.1.1.3 nvidia-cusolver==12.0.4.66 nvidia-cuda-runtime==13.0.96)
VENV_PACKAGES=("$TORCH_CUDA_SPEC" "cmake>=3.31,<4" ninja pybind11)

T0=$SECONDS
say() { printf '[cuda-check %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[cuda-check] FAILED: %s\n' "$*" >&2; exit 1; }
# pip on this machine warns about every missing local index folder: keep only the real output.
run_pip() {
  local log; log=$(mktemp)
  if ! "$@" > "$log" 2>&1; then grep -v '^WARNING: Location ' "$log" >&2; rm -f "$log"; return 1; fi
  grep -v -e '^WARNING: Location ' -e '^$' "$log" || true
  rm -f "$log"
}

# ---- nvcc ------------------------------------------------------------------------------------
NVCC=${NVCC:-${CUDACXX:-}}
if [ -z "$NVCC" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc
  else NVCC=$(command -v nvcc || true); fi
fi
if [ -z "$NVCC" ] || [ ! -x "$NVCC" ]; then
  msg="no nvcc found (looked at \$NVCC, \$CUDACXX, /usr/local/cuda/bin/nvcc and PATH)"
  if [ "${CUDA_CHECK:-}" = "skip" ]; then
    echo "[cuda-check] SKIPPED: $msg; CUDA_CHECK=skip is set, so this is not an error"
    exit 0
  fi
  die "$msg. Install the CUDA toolkit (nvcc 13), point NVCC at it, or run with CUDA_CHECK=skip to skip this check explicitly"
fi
NVCC=$(readlink -f "$NVCC")
CUDA_HOME=$(dirname "$(dirname "$NVCC")")
say "nvcc: $NVCC ($("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"

# ---- (a) headers and the torch-free kernels ----------------------------------------------------
stamp_text="${HEADER_WHEELS[*]}"
if [ "$(cat "$HEADERS/.stamp" 2>/dev/null || true)" != "$stamp_text" ]; then
  say "fetching cuBLAS/cuSOLVER headers: ${HEADER_WHEELS[*]}"
  rm -rf "$HEADERS"
  mkdir -p "$HEADERS/wheels"
  run_pip "$PYTHON_BOOT" -m pip download -q --no-deps --only-binary=:all: -d "$HEADERS/wheels" \
    "${HEADER_WHEELS[@]}" || die "pip download ${HEADER_WHEELS[*]}"
  "$PYTHON_BOOT" - "$HEADERS" <<'EOF'
import pathlib, sys, zipfile
dest = pathlib.Path(sys.argv[1])
for wheel in sorted((dest / "wheels").glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest, [n for n in z.namelist() if "/include/" in n and n.startswith("nvidia/")])
EOF
  rm -rf "$HEADERS/wheels"
  [ -f "$HEADERS/nvidia/cu13/include/cusolverDn.h" ] || die "cusolverDn.h missing from the wheels"
  echo "$stamp_text" > "$HEADERS/.stamp"
fi
INC=$HEADERS/nvidia/cu13/include

mkdir -p "$OUT/nvcc"
deps=(csrc/kernels/*.h csrc/kernels/*.cu "${BASH_SOURCE[0]}")
for cu in csrc/kernels/*.cu; do
  obj=$OUT/nvcc/$(basename "$cu" .cu).o
  stale=0
  if [ ! -f "$obj" ]; then stale=1; else
    for d in "${deps[@]}"; do [ "$d" -nt "$obj" ] && stale=1 && break; done
  fi
  if [ "$stale" = 1 ]; then
    say "nvcc -c $cu (sm_80, sm_90)"
    "$NVCC" -c -std=c++20 -O3 "${NVCC_ARCH_FLAGS[@]}" -Xcompiler -fPIC,-Wall,-Wextra \
      -Werror all-warnings -I"$INC" -Icsrc/kernels "$cu" -o "$obj.tmp" || die "nvcc $cu"
    mv "$obj.tmp" "$obj"
  fi
done
for obj in "$OUT"/nvcc/*.o; do
  for sm in sm_80 sm_90; do
    "$(dirname "$NVCC")/cuobjdump" --list-elf "$obj" 2>/dev/null | grep -q "$sm" ||
      [ ! -x "$(dirname "$NVCC")/cuobjdump" ] || die "$obj has no $sm code"
  done
done
say "(a) kernels compiled: $(cd "$OUT/nvcc" && ls ./*.o | tr '\n' ' ')"

# ---- (b) the extension against CUDA torch -----------------------------------------------------
venv_stamp="${VENV_PACKAGES[*]}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.gffmerge-cuda-check" 2>/dev/null || true)" != "$venv_stamp" ]; then
  say "creating $VENV with ${VENV_PACKAGES[*]} (about 5.5 GB; a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON_BOOT" -m venv "$VENV"
  run_pip "$VENV/bin/python" -m pip install -q --no-compile --disable-pip-version-check "${VENV_PACKAGES[@]}" ||
    die "pip install ${VENV_PACKAGES[*]} into $VENV"
  echo "$venv_stamp" > "$VENV/.gffmerge-cuda-check"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
WHEEL_CUDA=$SITE/nvidia/cu13
[ -d "$WHEEL_CUDA/lib" ] || die "$WHEEL_CUDA/lib missing: is $TORCH_CUDA_SPEC a CUDA 13 build?"

# Merged CUDA root: FindCUDAToolkit and torch's CMake want one toolkit directory, but nvcc
# lives in $CUDA_HOME and cuBLAS/cuSOLVER/nvrtc in torch's wheels.
R=$OUT/cuda-root
rm -rf "$R"
mkdir -p "$R/include" "$R/lib"
for d in bin nvvm targets; do [ -e "$CUDA_HOME/$d" ] && ln -s "$CUDA_HOME/$d" "$R/$d"; done
for f in "$CUDA_HOME"/include/* "$WHEEL_CUDA"/include/*; do
  [ -e "$R/include/$(basename "$f")" ] || ln -s "$f" "$R/include/"
done
for f in "$CUDA_HOME"/lib64/* "$CUDA_HOME"/lib/* "$WHEEL_CUDA"/lib/*; do
  [ -e "$f" ] && { [ -e "$R/lib/$(basename "$f")" ] || ln -s "$f" "$R/lib/"; }
done
for f in "$R"/lib/*.so.*; do
  base=${f%%.so.*}.so
  [ -e "$base" ] || ln -s "$(basename "$f")" "$base"
done
ln -s lib "$R/lib64"

export TORCH_CUDA_ARCH_LIST=$ARCH_LIST
BUILD=$OUT/ext
if [ ! -f "$BUILD/build.ninja" ]; then
  say "configuring $BUILD (CMake $("$VENV/bin/cmake" --version | head -1 | awk '{print $3}'))"
  "$VENV/bin/cmake" -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" -DPython_EXECUTABLE="$VENV/bin/python" \
    -DGFFMERGE_CUDA=ON -DCMAKE_CUDA_COMPILER="$R/bin/nvcc" -DCUDAToolkit_ROOT="$R" \
    -DCUDA_TOOLKIT_ROOT_DIR="$R" > "$OUT/configure.log" 2>&1 ||
    { tail -40 "$OUT/configure.log"; rm -f "$BUILD/build.ninja"; die "CMake configure (log: $OUT/configure.log)"; }
  grep -E "gffmerge build:" "$OUT/configure.log" || true
fi
say "building the extension (ninja -j$JOBS)"
"$VENV/bin/ninja" -C "$BUILD" -j"$JOBS" > "$OUT/build.log" 2>&1 ||
  { tail -60 "$OUT/build.log"; die "build (log: $OUT/build.log)"; }
grep -E "^\[[0-9]+/[0-9]+\]" "$OUT/build.log" | sed 's/^/    /' || true

BUILT=$(ls "$BUILD"/_C*.so 2>/dev/null | head -1)
[ -n "$BUILT" ] || die "no _C*.so in $BUILD"
# The installed layout, so that the RPATH $ORIGIN/../torch/lib is what finds torch's libraries.
rm -rf "$OUT/site"
mkdir -p "$OUT/site/gffmerge_ext"
ln -s "$SITE/torch" "$OUT/site/torch"
MODULE=$OUT/site/gffmerge_ext/$(basename "$BUILT")
cp "$BUILT" "$MODULE"
say "importing $(basename "$MODULE") under $("$VENV/bin/python" -c 'import importlib.metadata as m; print("torch", m.version("torch"))' 2>/dev/null)"
cat > "$OUT/load_check.py" <<'EOF'
import importlib.machinery, importlib.util, sys
import torch
path = sys.argv[1]
loader = importlib.machinery.ExtensionFileLoader("gffmerge_ext._C", path)
spec = importlib.util.spec_from_file_location("gffmerge_ext._C", path, loader=loader)
mod = importlib.util.module_from_spec(spec)
loader.exec_module(mod)
info = mod.build_info()
assert info["cuda"] is True and info["cuda_archs"] == ["8.0", "9.0"], info
missing = [op for op in ("gram_", "cross_", "cholesky_solve_")
           for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"gffmerge::{op}", key)]
assert not missing, f"ops without a kernel: {missing}"
print(f"    loaded: cuda={info['cuda']} archs={info['cuda_archs']} torch={info['torch_version']}; "
      "gram_, cross_, cholesky_solve_ have CPU and CUDA kernels "
      f"(torch.cuda.is_available() = {torch.cuda.is_available()}: nothing is run)")
EOF
# (CUDA torch without numpy warns on import; that noise is dropped.)
if ! "$VENV/bin/python" "$OUT/load_check.py" "$MODULE" > "$OUT/load_check.log" 2>&1; then
  cat "$OUT/load_check.log" >&2
  die "the built module did not load under CUDA torch"
fi
grep -v -e "NumPy" -e "_conversion_method_template" -e "^ *cpu = " "$OUT/load_check.log" || true
say "OK"
