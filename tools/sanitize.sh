#!/usr/bin/env bash
# `make sanitize`: the CPU extension built with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option GFFMERGE_SANITIZE=ON, its own build folder), then the CPU op tests run against
# it: tests/test_ops.py and tests/test_ops_solve.py, and with FUZZ_CASES=N (default 2000, 0 to
# skip) benchmarks/fuzz_ops.py on N random cases.
#
# The installed extension in .venv is not touched: the sanitized module is loaded under the
# name gffmerge_ext._C before anything imports gffmerge_ext. Python itself is not
# instrumented, so libasan is preloaded (LD_PRELOAD); leak detection is off (the interpreter
# and torch keep allocations alive at exit). Every finding aborts the run: -fno-sanitize-recover
# for UBSan, halt_on_error for ASan.
#
# Environment: PY (.venv/bin/python), SANITIZE_BUILD (build/sanitize), JOBS (2), FUZZ_CASES,
# PYTEST_ARGS (extra pytest arguments, e.g. -x).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
BUILD=${SANITIZE_BUILD:-$ROOT/build/sanitize}
JOBS=${JOBS:-2}
FUZZ_CASES=${FUZZ_CASES:-2000}
T0=$SECONDS
say() { printf '[sanitize %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[sanitize] FAILED: %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || die "no $PY; run \`make install\` first (or set PY)"
CXX=${CXX:-$(command -v g++ || command -v c++ || true)}
[ -n "$CXX" ] || die "no C++ compiler found (set CXX)"
LIBASAN=$("$CXX" -print-file-name=libasan.so)
[ -f "$LIBASAN" ] || die "$CXX has no libasan.so ($LIBASAN); install the compiler's sanitizer runtime (libasan)"
CMAKE=$(command -v cmake || echo "$(dirname "$PY")/cmake")
NINJA=$(command -v ninja || echo "$(dirname "$PY")/ninja")

say "configure $BUILD (GFFMERGE_SANITIZE=ON, RelWithDebInfo, CPU only, $CXX)"
mkdir -p "$BUILD"
"$CMAKE" -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_MAKE_PROGRAM="$NINJA" -DCMAKE_CXX_COMPILER="$CXX" -DPython_EXECUTABLE="$PY" \
  -DGFFMERGE_CUDA=OFF -DGFFMERGE_SANITIZE=ON > "$BUILD/configure.log" 2>&1 ||
  { tail -30 "$BUILD/configure.log" >&2; die "configure (log: $BUILD/configure.log)"; }
grep -h "gffmerge build:" "$BUILD/configure.log" | sed 's/^-- /  /' || true
say "build (-j$JOBS)"
"$CMAKE" --build "$BUILD" -j "$JOBS" > "$BUILD/build.log" 2>&1 ||
  { tail -30 "$BUILD/build.log" >&2; die "build (log: $BUILD/build.log)"; }
SO=$(ls "$BUILD"/_C*.so 2>/dev/null | head -1)
[ -n "$SO" ] || die "no _C*.so in $BUILD"
nm -D "$SO" | grep __asan_ > /dev/null || die "$SO is not instrumented (no __asan_ symbols)"

TORCH_LIB=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
# libstdc++ too: python does not link it, and ASan's __cxa_throw interceptor must find the
# real one when it starts (else the first C++ exception, even a caught one, is a CHECK failure).
LIBSTDCXX=$("$CXX" -print-file-name=libstdc++.so)
export LD_PRELOAD="$LIBASAN:$LIBSTDCXX${LD_PRELOAD:+:$LD_PRELOAD}"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# ASan's reports go to files, and pytest captures only sys.stdout/sys.stderr
# (--capture=sys): with its default fd capture, a process that aborts takes the captured
# report with it.
REPORTS="$BUILD/reports"
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$REPORTS/asan}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan}
reports() {  # print any sanitizer report and fail
  if compgen -G "$REPORTS/*" > /dev/null; then
    for f in "$REPORTS"/*; do echo "==== $f"; head -80 "$f"; done >&2
    die "$1: a sanitizer fired (reports above, in $REPORTS)"
  fi
}
export GFFMERGE_SANITIZED_SO="$SO"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# Load the sanitized module as gffmerge_ext._C, then run the given python code.
preload='
import importlib.util, os, sys
import torch
so = os.environ["GFFMERGE_SANITIZED_SO"]
spec = importlib.util.spec_from_file_location("gffmerge_ext._C", so)
mod = importlib.util.module_from_spec(spec)
sys.modules["gffmerge_ext._C"] = mod
spec.loader.exec_module(mod)
import gffmerge_ext
from gffmerge_ext import _loading
assert _loading._C is mod, "the sanitized module was not the one loaded"
assert gffmerge_ext.extension_available(), _loading.load_error()
print("[sanitize] loaded", so, "|", mod.build_info()["build_type"], "|", mod.build_info()["compiler"], flush=True)
'

say "pytest tests/test_ops.py tests/test_ops_solve.py under ASan+UBSan"
# shellcheck disable=SC2086
"$PY" -c "$preload
import pytest
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--capture=sys', 'tests/test_ops.py', 'tests/test_ops_solve.py'] + sys.argv[1:]))" ${PYTEST_ARGS:-} ||
  { reports "the op tests"; die "the op tests failed, or a sanitizer fired (see above)"; }
reports "the op tests"

if [ "$FUZZ_CASES" != "0" ]; then
  say "benchmarks/fuzz_ops.py --cases $FUZZ_CASES under ASan+UBSan (results not written)"
  "$PY" -c "$preload
import runpy
sys.argv = ['benchmarks/fuzz_ops.py', '--cases', '$FUZZ_CASES', '--no-write']
runpy.run_path('benchmarks/fuzz_ops.py', run_name='__main__')" ||
    { reports "the fuzzer"; die "the fuzzer failed: a disagreement with the reference, or a sanitizer finding (see above)"; }
  reports "the fuzzer"
fi
say "OK: no sanitizer findings"
