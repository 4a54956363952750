// Argument validation of gram_, cross_, parts_gram_, row_gram_, csr_mm_, dense_csr_count_,
// dense_csr_fill_ and cholesky_solve_: every check and every message is
// here, and each backend's glue (*_cpu.cpp, *_cuda.cpp) calls these before touching data.
// Messages name the bad value and the expected one. gffmerge_ext/checks.py is the pure-torch
// reference's copy (same order, same messages); change both together.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>

namespace gffmerge::ops {

inline bool is_row_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

inline void check_same_device(const char* op, const at::Tensor& acc, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK(t.device() == acc.device(), op, ": ", name, " is on ", t.device(),
              " but acc is on ", acc.device(), "; all tensors must be on the same device");
}

inline void check_rows(const char* op, const at::Tensor& acc, const at::Tensor& x,
                       const char* name) {
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D [rows, features], got a ", x.dim(),
              "-D tensor of shape ", x.sizes());
  TORCH_CHECK(is_row_dtype(x.scalar_type()), op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
  check_same_device(op, acc, x, name);
}

// Number of gathered rows: len(index) if given, else the rows of x.
inline int64_t check_index(const char* op, const at::Tensor& acc,
                           const std::optional<at::Tensor>& index, const char* name,
                           const at::Tensor& x) {
  if (!index.has_value()) return x.size(0);
  const at::Tensor& ix = *index;
  TORCH_CHECK(ix.scalar_type() == at::kLong || ix.scalar_type() == at::kInt, op, ": ", name,
              " must be int64 or int32, got ", ix.scalar_type());
  TORCH_CHECK(ix.dim() == 1, op, ": ", name, " must be 1-D, got shape ", ix.sizes());
  check_same_device(op, acc, ix, name);
  return ix.size(0);
}

inline void check_weight(const char* op, const at::Tensor& acc,
                         const std::optional<at::Tensor>& weight, int64_t count) {
  if (!weight.has_value()) return;
  const at::Tensor& w = *weight;
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, op,
              ": weight must be float32 or float64, got ", w.scalar_type());
  TORCH_CHECK(w.dim() == 1, op, ": weight must be 1-D, got shape ", w.sizes());
  TORCH_CHECK(w.size(0) == count, op,
              ": weight must have one entry per gathered row: expected ", count, ", got ",
              w.size(0));
  check_same_device(op, acc, w, "weight");
}

// Index values are checked where the data is: the backend finds the first position p whose
// value lies outside [0, rows) (p < 0: none) and reports it here.
inline void check_index_range(const char* op, const char* name, int64_t p, int64_t value,
                              int64_t rows, const char* of) {
  TORCH_CHECK(p < 0, op, ": ", name, "[", p, "] = ", value, " is out of range for ", of,
              " with ", rows, " rows (valid: 0 <= ", name, " < ", rows, ")");
}

inline void check_acc(const char* op, const at::Tensor& acc, int64_t rows, int64_t cols,
                      const char* why) {
  TORCH_CHECK(acc.scalar_type() == at::kDouble, op, ": acc must be float64, got ",
              acc.scalar_type());
  TORCH_CHECK(acc.dim() == 2 && acc.size(0) == rows && acc.size(1) == cols, op,
              ": acc must have shape [", rows, ", ", cols, "] (", why, "), got ", acc.sizes());
  TORCH_CHECK(acc.is_contiguous(), op, ": acc must be contiguous, got strides ", acc.strides());
}

// Both return the number of gathered rows (pairs).
inline int64_t check_gram(const at::Tensor& acc, const at::Tensor& x,
                           const std::optional<at::Tensor>& index,
                           const std::optional<at::Tensor>& weight, bool augment) {
  constexpr const char* op = "gffmerge::gram_";
  check_rows(op, acc, x, "x");
  const int64_t d = x.size(1) + (augment ? 1 : 0);
  const std::string why = "x has " + std::to_string(x.size(1)) + " features, augment=" +
                          (augment ? "True" : "False");
  check_acc(op, acc, d, d, why.c_str());
  const int64_t count = check_index(op, acc, index, "index", x);
  check_weight(op, acc, weight, count);
  return count;
}

inline int64_t check_cross(const at::Tensor& acc, const at::Tensor& x, const at::Tensor& y,
                            const std::optional<at::Tensor>& index_x,
                            const std::optional<at::Tensor>& index_y,
                            const std::optional<at::Tensor>& weight, bool augment_x) {
  constexpr const char* op = "gffmerge::cross_";
  check_rows(op, acc, x, "x");
  check_rows(op, acc, y, "y");
  const std::string why = "x has " + std::to_string(x.size(1)) + " features, augment_x=" +
                          (augment_x ? "True" : "False") + ", y has " +
                          std::to_string(y.size(1)) + " features";
  check_acc(op, acc, x.size(1) + (augment_x ? 1 : 0), y.size(1), why.c_str());
  const int64_t nx = check_index(op, acc, index_x, "index_x", x);
  const int64_t ny = check_index(op, acc, index_y, "index_y", y);
  TORCH_CHECK(nx == ny, op, ": x and y must pair up row for row, but ",
              index_x ? "len(index_x)" : "x.shape[0]", " = ", nx, " and ",
              index_y ? "len(index_y)" : "y.shape[0]", " = ", ny);
  check_weight(op, acc, weight, nx);
  return nx;
}

// Returns the number of rows R (of dense, else of indices[0]).
inline int64_t check_parts_gram(const at::Tensor& acc, const std::optional<at::Tensor>& dense,
                                c10::ArrayRef<at::Tensor> nodes,
                                c10::ArrayRef<at::Tensor> indices,
                                c10::ArrayRef<std::optional<at::Tensor>> gates) {
  constexpr const char* op = "gffmerge::parts_gram_";
  TORCH_CHECK(nodes.size() == indices.size() && nodes.size() == gates.size(), op,
              ": nodes, indices and gates must have one entry per gathered part, got ",
              nodes.size(), ", ", indices.size(), " and ", gates.size());
  TORCH_CHECK(dense.has_value() || !nodes.empty(), op,
              ": needs dense rows or at least one gathered part, got neither");
  int64_t width = 0;
  if (dense.has_value()) {
    check_rows(op, acc, *dense, "dense");
    width += dense->size(1);
  }
  for (size_t q = 0; q < nodes.size(); ++q) {
    const std::string name = "nodes[" + std::to_string(q) + "]";
    check_rows(op, acc, nodes[q], name.c_str());
    width += nodes[q].size(1);
  }
  const std::string why = "dense and nodes have " + std::to_string(width) +
                          " features in all, plus the ones column";
  check_acc(op, acc, width + 1, width + 1, why.c_str());
  const int64_t count = dense.has_value() ? dense->size(0) : indices[0].size(0);
  const char* of = dense.has_value() ? "dense.shape[0]" : "len(indices[0])";
  for (size_t q = 0; q < indices.size(); ++q) {
    const std::string name = "indices[" + std::to_string(q) + "]";
    const int64_t len = check_index(op, acc, indices[q], name.c_str(), nodes[q]);
    TORCH_CHECK(len == count, op, ": ", name, " must have one entry per row: expected ", count,
                " (", of, "), got ", len);
    if (gates[q].has_value()) {
      const at::Tensor& g = *gates[q];
      const std::string gname = "gates[" + std::to_string(q) + "]";
      TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble, op, ": ",
                  gname, " must be float32 or float64, got ", g.scalar_type());
      TORCH_CHECK(g.dim() == 1 && g.size(0) == count, op, ": ", gname,
                  " must be 1-D with one entry per row: expected [", count, "], got shape ",
                  g.sizes());
      check_same_device(op, acc, g, gname.c_str());
    }
  }
  return count;
}

// Returns nnz (len(col)). The row pointers and column values are checked on the data by the
// backend (check_row_pointers below, check_index_range).
inline int64_t check_row_gram(const at::Tensor& acc, const at::Tensor& crow,
                              const at::Tensor& col, const at::Tensor& values, int64_t cols) {
  constexpr const char* op = "gffmerge::row_gram_";
  TORCH_CHECK(crow.scalar_type() == at::kLong || crow.scalar_type() == at::kInt, op,
              ": crow must be int64 or int32, got ", crow.scalar_type());
  TORCH_CHECK(crow.dim() == 1 && crow.size(0) >= 1, op,
              ": crow must be 1-D with rows + 1 >= 1 entries, got shape ", crow.sizes());
  check_same_device(op, acc, crow, "crow");
  const int64_t rows = crow.size(0) - 1;
  const std::string why = "crow has " + std::to_string(rows) + " rows";
  check_acc(op, acc, rows, rows, why.c_str());
  TORCH_CHECK(col.scalar_type() == at::kLong || col.scalar_type() == at::kInt, op,
              ": col must be int64 or int32, got ", col.scalar_type());
  TORCH_CHECK(col.dim() == 1, op, ": col must be 1-D, got shape ", col.sizes());
  check_same_device(op, acc, col, "col");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": values must be float32 or float64, got ", values.scalar_type());
  TORCH_CHECK(values.dim() == 1 && values.size(0) == col.size(0), op,
              ": values must be 1-D with one entry per column index: expected [", col.size(0),
              "], got shape ", values.sizes());
  check_same_device(op, acc, values, "values");
  TORCH_CHECK(cols >= 0, op, ": cols must be >= 0, got ", cols);
  return col.size(0);
}

// Returns nnz (len(col)); the row pointers and column values as for row_gram_.
inline int64_t check_csr_mm(const at::Tensor& out, const at::Tensor& crow, const at::Tensor& col,
                            const at::Tensor& values, const at::Tensor& m) {
  constexpr const char* op = "gffmerge::csr_mm_";
  TORCH_CHECK(out.scalar_type() == at::kDouble, op, ": out must be float64, got ",
              out.scalar_type());
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous(), op,
              ": out must be a contiguous 2-D [rows, k] tensor, got shape ", out.sizes(),
              " and strides ", out.strides());
  TORCH_CHECK(crow.scalar_type() == at::kLong || crow.scalar_type() == at::kInt, op,
              ": crow must be int64 or int32, got ", crow.scalar_type());
  TORCH_CHECK(crow.dim() == 1 && crow.size(0) == out.size(0) + 1, op,
              ": crow must be 1-D with rows + 1 = ", out.size(0) + 1,
              " entries (rows from out), got shape ", crow.sizes());
  check_same_device(op, out, crow, "crow");
  TORCH_CHECK(col.scalar_type() == at::kLong || col.scalar_type() == at::kInt, op,
              ": col must be int64 or int32, got ", col.scalar_type());
  TORCH_CHECK(col.dim() == 1, op, ": col must be 1-D, got shape ", col.sizes());
  check_same_device(op, out, col, "col");
  TORCH_CHECK(values.scalar_type() == at::kDouble, op, ": values must be float64, got ",
              values.scalar_type());
  TORCH_CHECK(values.dim() == 1 && values.size(0) == col.size(0), op,
              ": values must be 1-D with one entry per column index: expected [", col.size(0),
              "], got shape ", values.sizes());
  check_same_device(op, out, values, "values");
  TORCH_CHECK(m.scalar_type() == at::kDouble, op, ": m must be float64, got ", m.scalar_type());
  TORCH_CHECK(m.dim() == 2 && m.size(1) == out.size(1), op, ": m must be 2-D [cols, ",
              out.size(1), "] (k from out), got shape ", m.sizes());
  TORCH_CHECK(m.size(1) <= 1 || m.stride(1) == 1, op,
              ": m's rows must be contiguous (stride 1 along k), got strides ", m.strides());
  check_same_device(op, out, m, "m");
  return col.size(0);
}

// The dense matrix of dense_csr_count_ / dense_csr_fill_ and its row pointers.
inline void check_dense_csr_x(const char* op, const at::Tensor& x, const at::Tensor& crow) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [rows, cols], got a ", x.dim(),
              "-D tensor of shape ", x.sizes());
  TORCH_CHECK(is_row_dtype(x.scalar_type()), op,
              ": x must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(crow.scalar_type() == at::kLong, op, ": crow must be int64, got ",
              crow.scalar_type());
  TORCH_CHECK(crow.dim() == 1 && crow.size(0) == x.size(0) + 1 && crow.is_contiguous(), op,
              ": crow must be a contiguous 1-D tensor with rows + 1 = ", x.size(0) + 1,
              " entries (rows from x), got shape ", crow.sizes());
  TORCH_CHECK(crow.device() == x.device(), op, ": crow is on ", crow.device(), " but x is on ",
              x.device(), "; all tensors must be on the same device");
}

inline void check_dense_csr_count(const at::Tensor& crow, const at::Tensor& x) {
  check_dense_csr_x("gffmerge::dense_csr_count_", x, crow);
}

// Returns nnz (len(col)); the row pointers are checked on the data by the backend
// (check_row_pointers), and each row's count against x (check_row_counts).
inline int64_t check_dense_csr_fill(const at::Tensor& col, const at::Tensor& values,
                                    const at::Tensor& crow, const at::Tensor& x) {
  constexpr const char* op = "gffmerge::dense_csr_fill_";
  check_dense_csr_x(op, x, crow);
  TORCH_CHECK(col.scalar_type() == at::kLong, op, ": col must be int64, got ",
              col.scalar_type());
  TORCH_CHECK(col.dim() == 1 && col.is_contiguous(), op,
              ": col must be a contiguous 1-D tensor, got shape ", col.sizes(), " and strides ",
              col.strides());
  TORCH_CHECK(col.device() == x.device(), op, ": col is on ", col.device(), " but x is on ",
              x.device(), "; all tensors must be on the same device");
  TORCH_CHECK(values.scalar_type() == at::kDouble, op, ": values must be float64, got ",
              values.scalar_type());
  TORCH_CHECK(values.dim() == 1 && values.size(0) == col.size(0) && values.is_contiguous(), op,
              ": values must be a contiguous 1-D tensor with one entry per column index: "
              "expected [", col.size(0), "], got shape ", values.sizes());
  TORCH_CHECK(values.device() == x.device(), op, ": values is on ", values.device(),
              " but x is on ", x.device(), "; all tensors must be on the same device");
  return col.size(0);
}

// The backend finds the first row of x whose non-zeros do not match its crow range (row < 0:
// none) and reports it here.
inline void check_row_counts(const char* op, int64_t row, int64_t found, int64_t given) {
  TORCH_CHECK(row < 0, op, ": row ", row, " of x has ", found, " non-zeros but crow gives it ",
              given, " (crow must come from dense_csr_count_ of the same x)");
}

// The backend finds the first position p of crow that breaks the CSR row pointers (p < 0:
// none) and reports it here.
inline void check_row_pointers(const char* op, int64_t p, int64_t value, int64_t rows,
                               int64_t nnz) {
  TORCH_CHECK(p < 0, op, ": crow[", p, "] = ", value, " breaks the CSR row pointers (crow[0] = 0, "
              "non-decreasing, crow[", rows, "] = len(col) = ", nnz, ")");
}

inline void check_column_range(const char* op, int64_t p, int64_t value, int64_t cols) {
  TORCH_CHECK(p < 0, op, ": col[", p, "] = ", value, " is out of range for cols = ", cols,
              " (valid: 0 <= col < ", cols, ")");
}

// Most jitter steps a call takes (they travel to the GPU as kernel arguments).
constexpr int64_t kMaxJitterSteps = 32;

inline void check_cholesky(const at::Tensor& A, const at::Tensor& B, const at::Tensor& info,
                           const at::Tensor& jitter, c10::ArrayRef<double> steps) {
  constexpr const char* op = "gffmerge::cholesky_solve_";
  TORCH_CHECK(A.scalar_type() == at::kDouble, op, ": A must be float64, got ", A.scalar_type());
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2), op,
              ": A must be [L, n, n] (a batch of square matrices), got shape ", A.sizes());
  const int64_t L = A.size(0);
  const int64_t n = A.size(1);
  TORCH_CHECK(A.is_contiguous(), op, ": A must be contiguous, got strides ", A.strides());
  TORCH_CHECK(B.scalar_type() == at::kDouble, op, ": B must be float64, got ", B.scalar_type());
  TORCH_CHECK(B.dim() == 3 && B.size(0) == L && B.size(1) == n, op, ": B must be [", L, ", ",
              n, ", k] (L and n from A), got shape ", B.sizes());
  TORCH_CHECK(B.is_contiguous(), op, ": B must be contiguous, got strides ", B.strides());
  TORCH_CHECK(info.scalar_type() == at::kInt, op, ": info must be int32, got ",
              info.scalar_type());
  TORCH_CHECK(info.dim() == 1 && info.size(0) == L && info.is_contiguous(), op,
              ": info must be a contiguous [", L, "] tensor, got shape ", info.sizes());
  TORCH_CHECK(jitter.scalar_type() == at::kDouble, op, ": jitter must be float64, got ",
              jitter.scalar_type());
  TORCH_CHECK(jitter.dim() == 1 && jitter.size(0) == L && jitter.is_contiguous(), op,
              ": jitter must be a contiguous [", L, "] tensor, got shape ", jitter.sizes());
  for (const auto& [t, name] : {std::pair{&B, "B"}, {&info, "info"}, {&jitter, "jitter"}}) {
    TORCH_CHECK(t->device() == A.device(), op, ": ", name, " is on ", t->device(),
                " but A is on ", A.device(), "; all tensors must be on the same device");
  }
  constexpr int64_t int_max = 2147483647;  // LAPACK / cuSOLVER / cuBLAS take int sizes
  TORCH_CHECK(L <= int_max && n <= int_max && B.size(2) <= int_max, op,
              ": sizes beyond 32-bit integers are not supported, got A ", A.sizes(), " and B ",
              B.sizes());
  TORCH_CHECK(static_cast<int64_t>(steps.size()) <= kMaxJitterSteps, op,
              ": at most ", kMaxJitterSteps, " jitter steps, got ", steps.size());
  for (size_t s = 0; s < steps.size(); ++s) {
    TORCH_CHECK(std::isfinite(steps[s]) && steps[s] > 0, op, ": jitter_steps[", s,
                "] must be finite and > 0, got ", steps[s]);
  }
}

}  // namespace gffmerge::ops
