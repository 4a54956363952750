// Batched Cholesky solves of SPD systems on the CPU, with diagonal jitter retries (no torch
// here). Layout as in cholesky_steps.h: A [batch, n, n] and B [batch, n, k] are row-major, the
// lower triangle of A is read, and the factor L (A = L L^T) is written there, zeros above.
//
// For each system: factorise; while that fails and jitter steps are left, refactorise
// A + (step * s) I from the original A, where s is the mean |diagonal| of the original A
// (1 when that is not > 0); solve in place when a factorisation succeeded. info[l] is 0 or the
// order of the failing leading minor of the last attempt; jitter[l] the jitter of the last
// attempt (0 when the plain factorisation succeeded). B of a failed system is left unchanged.
#pragma once

#include <cstdint>

namespace gffmerge::kernels {

// LAPACK-style, column-major, uplo = U: factorises the n x n matrix in place and returns info.
using PotrfFn = int (*)(std::int64_t n, double* a, std::int64_t lda);
// Solves (U^T U) X = B for a column-major n x nrhs B in place, U from PotrfFn.
using PotrsFn = void (*)(std::int64_t n, std::int64_t nrhs, const double* u, std::int64_t lda,
                         double* b, std::int64_t ldb);

struct Lapack {
  PotrfFn potrf = nullptr;
  PotrsFn potrs = nullptr;
};

// dpotrf_/dpotrs_ exported by the LAPACK that torch links (MKL on x86 wheels); null members
// when it exports none.
Lapack linked_lapack();

void cholesky_solve_batched(double* a, double* b, std::int32_t* info, double* jitter,
                            std::int64_t batch, std::int64_t n, std::int64_t k,
                            const double* steps, std::int64_t nsteps, const Lapack& lapack);

}  // namespace gffmerge::kernels
