// Scalar loads of the supported activation dtypes as float64 (no torch here). Shared by the
// CPU kernels and the CUDA kernels (nvcc sees the same conversions, so both round alike).
#pragma once

#include <cstdint>

#include <bit>

#if defined(__CUDACC__)
#define GFFMERGE_HD __host__ __device__ __forceinline__
#else
#define GFFMERGE_HD inline
#endif

namespace gffmerge::kernels {

struct BFloat16Bits {
  std::uint16_t bits;
};
struct HalfBits {
  std::uint16_t bits;
};

GFFMERGE_HD float float_from_bits(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

GFFMERGE_HD std::uint32_t bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return std::bit_cast<std::uint32_t>(f);
#endif
}

GFFMERGE_HD double to_double(float v) { return v; }
GFFMERGE_HD double to_double(double v) { return v; }

GFFMERGE_HD double to_double(BFloat16Bits v) {
  return float_from_bits(static_cast<std::uint32_t>(v.bits) << 16);
}

// Branch-free so that the gather loops vectorise: the 5-bit exponent is placed in the low bits
// of the float exponent and rescaled by 2^(127-15), which is exact for normals and subnormals;
// inf/NaN get the all-ones float exponent instead.
GFFMERGE_HD double to_double(HalfBits v) {
  const std::uint32_t sign = static_cast<std::uint32_t>(v.bits & 0x8000u) << 16;
  const std::uint32_t em = v.bits & 0x7fffu;
  const std::uint32_t scaled = bits_from_float(float_from_bits(em << 13) * 0x1p112f);
  const std::uint32_t special = (em << 13) | 0x7f800000u;
  return float_from_bits(sign | (em >= 0x7c00u ? special : scaled));
}

}  // namespace gffmerge::kernels
