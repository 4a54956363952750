// Scalar loads of the supported activation dtypes as float64 (no torch here).
#pragma once

#include <bit>
#include <cstdint>

namespace gffmerge::kernels {

struct BFloat16Bits {
  std::uint16_t bits;
};
struct HalfBits {
  std::uint16_t bits;
};

inline double to_double(float v) { return v; }
inline double to_double(double v) { return v; }

inline double to_double(BFloat16Bits v) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(v.bits) << 16);
}

// Branch-free so that the gather loops vectorise: the 5-bit exponent is placed in the low bits
// of the float exponent and rescaled by 2^(127-15), which is exact for normals and subnormals;
// inf/NaN get the all-ones float exponent instead.
inline double to_double(HalfBits v) {
  const std::uint32_t sign = static_cast<std::uint32_t>(v.bits & 0x8000u) << 16;
  const std::uint32_t em = v.bits & 0x7fffu;
  const std::uint32_t scaled = std::bit_cast<std::uint32_t>(std::bit_cast<float>(em << 13) * 0x1p112f);
  const std::uint32_t special = (em << 13) | 0x7f800000u;
  return std::bit_cast<float>(sign | (em >= 0x7c00u ? special : scaled));
}

}  // namespace gffmerge::kernels
