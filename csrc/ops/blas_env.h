// The one reader of the GFFMERGE_BLAS and GFFMERGE_GRAM_ROUTE environment variables
// (torch-free, so module.cpp's build_info() shares it). GFFMERGE_BLAS=aten routes the CPU
// kernels' dgemm, potrf and potrs through ATen instead of the BLAS/LAPACK symbols libtorch
// exports, to compare the two;
// GFFMERGE_BLAS=dgemm keeps the exported symbols but forms the Gram/cross block products by
// dgemm instead of the kernels' own register tiles (both of these turn the tiles off);
// GFFMERGE_BLAS=avx2 keeps the register tiles but only their AVX2 width (the AVX-512 ones give
// the same sums to the bit, twice as fast: to compare the two); any
// other value, or none, keeps the exported ones and the tiles. Read on every call, not cached, so that a
// test or a user can switch it within one process.
#pragma once

#include <cstdlib>
#include <cstring>

namespace gffmerge::ops {

inline bool aten_blas_requested() {
  const char* env = std::getenv("GFFMERGE_BLAS");
  return env != nullptr && std::strcmp(env, "aten") == 0;
}

// GFFMERGE_GRAM_ROUTE (gram_/cross_: "mm" or "kernel"; ops/gram_mm.h parses it): the raw
// value, nullptr when unset.
inline const char* gram_route_env() { return std::getenv("GFFMERGE_GRAM_ROUTE"); }

inline bool block_tiles_allowed() {
  const char* env = std::getenv("GFFMERGE_BLAS");
  return env == nullptr || (std::strcmp(env, "aten") != 0 && std::strcmp(env, "dgemm") != 0);
}

inline bool wide_tiles_allowed() {
  const char* env = std::getenv("GFFMERGE_BLAS");
  return env == nullptr || std::strcmp(env, "avx2") != 0;
}

}  // namespace gffmerge::ops
