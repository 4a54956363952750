#include "row_gram.h"

#include <omp.h>

#include <algorithm>
#include <vector>

namespace gffmerge::kernels {

using std::int64_t;

int64_t first_bad_row_pointer(const Index& crow, int64_t rows, int64_t nnz, int64_t* value) {
  int64_t prev = 0;
  for (int64_t p = 0; p <= rows; ++p) {
    const int64_t v = index_at(crow, p);
    const bool bad = (p == 0 && v != 0) || v < prev || (p == rows && v != nnz);
    if (bad) {
      if (value) *value = v;
      return p;
    }
    prev = v;
  }
  return -1;
}

void row_gram_accumulate(double* acc, int64_t rows, int64_t cols, const Index& crow,
                         const Index& col, const Weights& val, int threads) {
  if (rows == 0) return;
  const int64_t nnz = index_at(crow, rows);
  // Z^T in CSR: each column's rows in increasing order (rows are visited in order).
  std::vector<int64_t> tptr(static_cast<size_t>(cols) + 1, 0);
  for (int64_t p = 0; p < nnz; ++p) ++tptr[static_cast<size_t>(index_at(col, p)) + 1];
  for (int64_t c = 0; c < cols; ++c) tptr[c + 1] += tptr[c];
  std::vector<int64_t> fill(tptr.begin(), tptr.end() - 1);
  std::vector<int64_t> trow(static_cast<size_t>(nnz));
  std::vector<double> tval(static_cast<size_t>(nnz));
  std::vector<int64_t> rcol(static_cast<size_t>(nnz));
  std::vector<double> rval(static_cast<size_t>(nnz));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t p = index_at(crow, i), e = index_at(crow, i + 1); p < e; ++p) {
      const int64_t c = index_at(col, p);
      const double v = val.data ? weight_at(val, p) : 1.0;
      const int64_t q = fill[c]++;
      trow[q] = i;
      tval[q] = v;
      rcol[p] = c;
      rval[p] = v;
    }
  }
  // Rows near the end of the triangle cost the most: small dynamic chunks.
  const int n_threads =
      omp_in_parallel() ? 1 : std::max(1, std::min<int>(threads, static_cast<int>(rows / 64)));
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<double> buf(static_cast<size_t>(rows));
#pragma omp for schedule(dynamic, 8)
    for (int64_t i = 0; i < rows; ++i) {
      std::fill(buf.begin(), buf.begin() + i + 1, 0.0);
      double* b = buf.data();
      for (int64_t p = index_at(crow, i), e = index_at(crow, i + 1); p < e; ++p) {
        const int64_t c = rcol[p];
        const double v = rval[p];
        const int64_t end = tptr[c + 1];
        for (int64_t q = tptr[c]; q < end; ++q) {
          const int64_t j = trow[q];
          if (j > i) break;
          b[j] += v * tval[q];
        }
      }
      double* row = acc + i * rows;
      for (int64_t j = 0; j < i; ++j) {
        row[j] += b[j];
        acc[j * rows + i] += b[j];
      }
      row[i] += b[i];
    }
  }
}

}  // namespace gffmerge::kernels
