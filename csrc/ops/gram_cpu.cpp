// CPU kernels of gffmerge::gram_, gffmerge::cross_, gffmerge::parts_gram_ and
// gffmerge::row_gram_, gffmerge::csr_mm_, gffmerge::dense_csr_count_ and
// gffmerge::dense_csr_fill_ (all but the first two CPU only: on
// other devices the callers use gram_/cross_ on their own scatter sums): validate, describe the tensors to the
// torch-free kernels, and hand them a BLAS dgemm.
// Narrow ATen headers on purpose: <ATen/ATen.h> doubles this file's compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "../kernels/gram.h"
#include "../kernels/parts_gram.h"
#include "../kernels/row_gram.h"
#include "../kernels/csr_mm.h"
#include "../kernels/dense_csr.h"
#include "blas_env.h"
#include "checks.h"
#include "describe.h"
#include "gram_mm.h"

namespace gffmerge::ops {
namespace {

namespace k = gffmerge::kernels;

void check_range(const char* op, const char* name, const k::Index& ix, int64_t count,
                 int64_t rows, const char* of) {
  int64_t value = 0;
  const int64_t p = k::first_out_of_range(ix, count, rows, &value);
  check_index_range(op, name, p, value, rows, of);
}

// Column-major matrix (rows x cols, leading dimension ld) as a strided tensor view.
at::Tensor column_major(const double* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<double*>(p), {rows, cols}, {1, ld},
                       at::TensorOptions().dtype(at::kDouble));
}

// Used when libtorch does not export a dgemm_ symbol (or GFFMERGE_BLAS=aten).
void aten_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t kk, double alpha,
               const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
               double* c, int64_t ldc) {
  const at::Tensor A = trans_a ? column_major(a, kk, m, lda).t() : column_major(a, m, kk, lda);
  const at::Tensor B = trans_b ? column_major(b, n, kk, ldb).t() : column_major(b, kk, n, ldb);
  at::Tensor C = column_major(c, m, n, ldc);
  C.addmm_(A, B, beta, alpha);
}

k::GemmFn select_gemm() {
  if (aten_blas_requested()) return &aten_gemm;
  if (const k::GemmFn f = k::linked_dgemm()) return f;
  return &aten_gemm;
}

k::Tuning tuning() {
  k::Tuning t;
  t.threads = at::get_num_threads();
  t.builtin_tiles = block_tiles_allowed();
  t.wide_tiles = wide_tiles_allowed();
  return t;
}

void gram_cpu(const at::Tensor& acc, const at::Tensor& x, const std::optional<at::Tensor>& index,
              const std::optional<at::Tensor>& weight, bool augment) {
  constexpr const char* op = "gffmerge::gram_";
  const int64_t count = check_gram(acc, x, index, weight, augment);
  const k::Index ix = as_index(index);
  check_range(op, "index", ix, count, x.size(0), "x");
  if (const auto c = mm_route::chosen(false); c.mm) {
    return mm_route::gram(c, acc, x, index, weight, augment, count);
  }
  k::gram_accumulate(acc.data_ptr<double>(), as_matrix(x), ix, count, as_weights(weight),
                     augment, select_gemm(), tuning());
}

void cross_cpu(const at::Tensor& acc, const at::Tensor& x, const at::Tensor& y,
               const std::optional<at::Tensor>& index_x,
               const std::optional<at::Tensor>& index_y,
               const std::optional<at::Tensor>& weight, bool augment_x) {
  constexpr const char* op = "gffmerge::cross_";
  const int64_t count = check_cross(acc, x, y, index_x, index_y, weight, augment_x);
  const k::Index ix = as_index(index_x);
  const k::Index iy = as_index(index_y);
  check_range(op, "index_x", ix, count, x.size(0), "x");
  check_range(op, "index_y", iy, count, y.size(0), "y");
  if (const auto c = mm_route::chosen(false); c.mm) {
    return mm_route::cross(c, acc, x, y, index_x, index_y, weight, augment_x, count);
  }
  k::cross_accumulate(acc.data_ptr<double>(), as_matrix(x), as_matrix(y), ix, iy, count,
                      as_weights(weight), augment_x, select_gemm(), tuning());
}

void parts_gram_cpu(const at::Tensor& acc, const std::optional<at::Tensor>& dense,
                    at::TensorList nodes, at::TensorList indices,
                    const c10::List<std::optional<at::Tensor>>& gates, bool dense_block) {
  constexpr const char* op = "gffmerge::parts_gram_";
  std::vector<std::optional<at::Tensor>> gate_list(gates.begin(), gates.end());
  const int64_t count = check_parts_gram(acc, dense, nodes, indices, gate_list);
  std::vector<k::GatheredRows> parts(nodes.size());
  for (size_t q = 0; q < nodes.size(); ++q) {
    parts[q] = {as_matrix(nodes[q]), as_index(indices[q]), as_weights(gate_list[q])};
    const std::string name = "indices[" + std::to_string(q) + "]";
    const std::string of = "nodes[" + std::to_string(q) + "]";
    check_range(op, name.c_str(), parts[q].index, count, nodes[q].size(0), of.c_str());
  }
  const k::Matrix rows = dense.has_value() ? as_matrix(*dense) : k::Matrix{};
  k::parts_gram_accumulate(acc.data_ptr<double>(), rows, parts.data(),
                           static_cast<int>(parts.size()), count, dense_block, select_gemm(),
                           tuning());
}

void row_gram_cpu(const at::Tensor& acc, const at::Tensor& crow, const at::Tensor& col,
                  const at::Tensor& values, int64_t cols) {
  constexpr const char* op = "gffmerge::row_gram_";
  const int64_t nnz = check_row_gram(acc, crow, col, values, cols);
  const int64_t rows = crow.size(0) - 1;
  const k::Index rp = as_index(crow);
  const k::Index ci = as_index(col);
  int64_t value = 0;
  const int64_t p = k::first_bad_row_pointer(rp, rows, nnz, &value);
  check_row_pointers(op, p, value, rows, nnz);
  const int64_t q = k::first_out_of_range(ci, nnz, cols, &value);
  check_column_range(op, q, value, cols);
  k::row_gram_accumulate(acc.data_ptr<double>(), rows, cols, rp, ci, as_weights(values),
                         at::get_num_threads());
}

void csr_mm_cpu(const at::Tensor& out, const at::Tensor& crow, const at::Tensor& col,
                const at::Tensor& values, const at::Tensor& m) {
  constexpr const char* op = "gffmerge::csr_mm_";
  const int64_t nnz = check_csr_mm(out, crow, col, values, m);
  const int64_t rows = out.size(0);
  const int64_t cols = m.size(0);
  const k::Index rp = as_index(crow);
  const k::Index ci = as_index(col);
  int64_t value = 0;
  const int64_t p = k::first_bad_row_pointer(rp, rows, nnz, &value);
  check_row_pointers(op, p, value, rows, nnz);
  const int64_t q = k::first_out_of_range(ci, nnz, cols, &value);
  check_column_range(op, q, value, cols);
  k::csr_mm_accumulate(out.data_ptr<double>(), out.size(1), rows, cols, rp, ci,
                       values.const_data_ptr<double>(), values.stride(0),
                       m.const_data_ptr<double>(), m.stride(0), m.size(1),
                       at::get_num_threads(), wide_tiles_allowed());
}

void dense_csr_count_cpu(const at::Tensor& crow, const at::Tensor& x) {
  check_dense_csr_count(crow, x);
  k::dense_csr_count(crow.data_ptr<int64_t>(), as_matrix(x), at::get_num_threads());
}

void dense_csr_fill_cpu(const at::Tensor& col, const at::Tensor& values, const at::Tensor& crow,
                        const at::Tensor& x) {
  constexpr const char* op = "gffmerge::dense_csr_fill_";
  const int64_t nnz = check_dense_csr_fill(col, values, crow, x);
  const int64_t rows = x.size(0);
  int64_t value = 0;
  const int64_t p = k::first_bad_row_pointer(as_index(crow), rows, nnz, &value);
  check_row_pointers(op, p, value, rows, nnz);
  const int64_t* rp = crow.const_data_ptr<int64_t>();
  int64_t found = 0;
  const int64_t bad = k::dense_csr_fill(col.data_ptr<int64_t>(), values.data_ptr<double>(), rp,
                                        as_matrix(x), at::get_num_threads(), &found);
  check_row_counts(op, bad, found, bad < 0 ? 0 : rp[bad + 1] - rp[bad]);
}

}  // namespace
}  // namespace gffmerge::ops

TORCH_LIBRARY_IMPL(gffmerge, CPU, m) {
  m.impl("gram_", &gffmerge::ops::gram_cpu);
  m.impl("cross_", &gffmerge::ops::cross_cpu);
  m.impl("parts_gram_", &gffmerge::ops::parts_gram_cpu);
  m.impl("row_gram_", &gffmerge::ops::row_gram_cpu);
  m.impl("csr_mm_", &gffmerge::ops::csr_mm_cpu);
  m.impl("dense_csr_count_", &gffmerge::ops::dense_csr_count_cpu);
  m.impl("dense_csr_fill_", &gffmerge::ops::dense_csr_fill_cpu);
}
