// Schemas of every gffmerge op. Backends register kernels in their own files:
// <kernel>_cpu.cpp (TORCH_LIBRARY_IMPL(gffmerge, CPU, m)), <kernel>_cuda.cpp (CUDA). Fake
// kernels are registered from Python (gffmerge_ext/fakes.py), one per schema here.
// csrc/README.md lists every file a new op touches.
#include <torch/library.h>

TORCH_LIBRARY(gffmerge, m) {
  m.def(
      "gram_(Tensor(a!) acc, Tensor x, Tensor? index=None, Tensor? weight=None, "
      "bool augment=False) -> ()");
  m.def(
      "cross_(Tensor(a!) acc, Tensor x, Tensor y, Tensor? index_x=None, Tensor? index_y=None, "
      "Tensor? weight=None, bool augment_x=False) -> ()");
  m.def(
      "parts_gram_(Tensor(a!) acc, Tensor? dense, Tensor[] nodes, Tensor[] indices, "
      "Tensor?[] gates, bool dense_block=True) -> ()");
  m.def("row_gram_(Tensor(a!) acc, Tensor crow, Tensor col, Tensor values, int cols) -> ()");
  m.def("csr_mm_(Tensor(a!) out, Tensor crow, Tensor col, Tensor values, Tensor m) -> ()");
  m.def("dense_csr_count_(Tensor(a!) crow, Tensor x) -> ()");
  m.def("dense_csr_fill_(Tensor(a!) col, Tensor(b!) values, Tensor crow, Tensor x) -> ()");
  m.def(
      "cholesky_solve_(Tensor(a!) A, Tensor(b!) B, Tensor(c!) info, Tensor(d!) jitter, "
      "float[] jitter_steps=[]) -> ()");
}
