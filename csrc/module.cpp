// The Python module gffmerge_ext._C. Importing it loads this library, whose static
// initialisers register the gffmerge::* ops with the dispatcher; the ops themselves are reached
// through torch.ops.gffmerge. Only build metadata is exposed here, so this file needs
// pybind11 but no torch headers.
#include <pybind11/pybind11.h>

#include <string>

#include "kernels/block_products.h"
#include "kernels/gram.h"
#include "ops/blas_env.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

py::list split_archs(const std::string& s) {
  py::list out;
  std::string cur;
  for (const char c : s + ";") {
    if (c == ';' || c == ' ' || c == ',') {
      if (!cur.empty()) out.append(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

std::string blas_in_use() {
  if (gffmerge::ops::aten_blas_requested()) return "aten (GFFMERGE_BLAS=aten)";
  return gffmerge::kernels::linked_dgemm() != nullptr ? "dgemm_ (linked from libtorch_cpu)"
                                                       : "aten (no dgemm_ symbol)";
}

std::string block_products() {
  if (!gffmerge::ops::block_tiles_allowed()) return "dgemm (GFFMERGE_BLAS set)";
  namespace b = gffmerge::kernels::blocks;
  if (gffmerge::ops::wide_tiles_allowed() && b::wide_tiles_available()) {
    return "register tiles (avx512f)";
  }
  return b::fma_tiles_available() ? "register tiles (avx2, fma)" : "dgemm (no avx2/fma)";
}

py::dict build_info() {
  py::dict d;
  d["compiler"] = GFFMERGE_COMPILER;
  d["cxx_standard"] = static_cast<long>(__cplusplus);
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = static_cast<long>(_OPENMP);
#else
  d["openmp"] = false;
  d["openmp_version"] = py::none();
#endif
#ifdef GFFMERGE_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  d["cuda_archs"] = split_archs(GFFMERGE_CUDA_ARCHS);
  d["torch_version"] = GFFMERGE_TORCH_VERSION;
  d["build_type"] = GFFMERGE_BUILD_TYPE;
  d["blas"] = blas_in_use();
  d["block_products"] = block_products();
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gffmerge compiled ops (registered as torch.ops.gffmerge.*)";
  m.def("build_info", &build_info,
        "Compiler, C++ standard, OpenMP, CUDA, torch version and BLAS of this build.");
}
