#include "dense_csr.h"

#include <omp.h>

#include <algorithm>
#include <atomic>

#include "convert.h"

namespace gffmerge::kernels {
namespace {

using std::int64_t;

template <class T>
int64_t count_row(const T* row, int64_t cols, int64_t cs) {
  int64_t n = 0;
  if (cs == 1) {
#pragma omp simd reduction(+ : n)
    for (int64_t c = 0; c < cols; ++c) n += to_double(row[c]) != 0.0;
  } else {
    for (int64_t c = 0; c < cols; ++c) n += to_double(row[c * cs]) != 0.0;
  }
  return n;
}

// Writes the row's entries into [p, end); returns the row's count of non-zeros (which the
// caller compares with end - p: nothing is written past end).
template <class T>
int64_t fill_row(const T* row, int64_t cols, int64_t cs, int64_t p, int64_t end, int64_t* col,
                 double* val) {
  int64_t n = 0;
  int64_t c = 0;
  if (cs == 1) {
    // Blocks of 16 tested at once (vectorised): at 1 % density most blocks hold no entry.
    for (; c + 16 <= cols; c += 16) {
      int any = 0;
#pragma omp simd reduction(| : any)
      for (int64_t b = 0; b < 16; ++b) any |= to_double(row[c + b]) != 0.0;
      if (!any) continue;
      for (int64_t b = c; b < c + 16; ++b) {
        const double v = to_double(row[b]);
        if (v != 0.0) {
          if (p + n < end) {
            col[p + n] = b;
            val[p + n] = v;
          }
          ++n;
        }
      }
    }
  }
  for (; c < cols; ++c) {
    const double v = to_double(row[c * cs]);
    if (v != 0.0) {
      if (p + n < end) {
        col[p + n] = c;
        val[p + n] = v;
      }
      ++n;
    }
  }
  return n;
}

template <class T>
void count_all(int64_t* crow, const Matrix& x, int n_threads) {
  const T* base = static_cast<const T*>(x.data);
#pragma omp parallel for schedule(static) num_threads(n_threads)
  for (int64_t i = 0; i < x.rows; ++i)
    crow[i + 1] = count_row(base + i * x.row_stride, x.cols, x.col_stride);
}

template <class T>
int64_t fill_all(int64_t* col, double* val, const int64_t* crow, const Matrix& x,
                 int n_threads, int64_t* found) {
  const T* base = static_cast<const T*>(x.data);
  std::atomic<int64_t> first_bad{x.rows};
  std::atomic<int64_t> bad_count{0};
#pragma omp parallel for schedule(static) num_threads(n_threads)
  for (int64_t i = 0; i < x.rows; ++i) {
    const int64_t n = fill_row(base + i * x.row_stride, x.cols, x.col_stride, crow[i],
                               crow[i + 1], col, val);
    if (n != crow[i + 1] - crow[i]) {
#pragma omp critical(gffmerge_dense_csr_fill)
      if (i < first_bad.load()) {
        first_bad.store(i);
        bad_count.store(n);
      }
    }
  }
  if (first_bad.load() == x.rows) return -1;
  if (found) *found = bad_count.load();
  return first_bad.load();
}

int threads_for(const Matrix& x, int threads) {
  // A row of a bag-of-words matrix is a few KB: below ~256 rows a thread is not worth it.
  return omp_in_parallel() ? 1
                           : std::max(1, std::min<int>(threads, static_cast<int>(x.rows / 256)));
}

}  // namespace

void dense_csr_count(int64_t* crow, const Matrix& x, int threads) {
  crow[0] = 0;
  if (x.rows == 0) return;
  const int n_threads = threads_for(x, threads);
  switch (x.dtype) {
    case DType::f32: count_all<float>(crow, x, n_threads); break;
    case DType::f64: count_all<double>(crow, x, n_threads); break;
    case DType::bf16: count_all<BFloat16Bits>(crow, x, n_threads); break;
    case DType::f16: count_all<HalfBits>(crow, x, n_threads); break;
  }
  for (int64_t i = 0; i < x.rows; ++i) crow[i + 1] += crow[i];
}

int64_t dense_csr_fill(int64_t* col, double* val, const int64_t* crow, const Matrix& x,
                       int threads, int64_t* found) {
  if (x.rows == 0) return -1;
  const int n_threads = threads_for(x, threads);
  switch (x.dtype) {
    case DType::f32: return fill_all<float>(col, val, crow, x, n_threads, found);
    case DType::f64: return fill_all<double>(col, val, crow, x, n_threads, found);
    case DType::bf16: return fill_all<BFloat16Bits>(col, val, crow, x, n_threads, found);
    case DType::f16: return fill_all<HalfBits>(col, val, crow, x, n_threads, found);
  }
  return -1;
}

}  // namespace gffmerge::kernels
