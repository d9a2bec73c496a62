/* Grid transfers of deepkrylov.solvers.multigrid on 3D cell-centred blocks (C order, x fastest), for a batch B.
 *
 * prolong_add:  u[b, i, j, k] += s[i, j, k] * (trilinear interpolation of the padded coarse block P)
 *   P has shape (B, m0+2, m1+2, m2+2) (one ghost cell per side, already filled by the caller); fine cell 2c gets
 *   3/4 of coarse cell c and 1/4 of c-1, fine cell 2c+1 3/4 of c and 1/4 of c+1, per axis. u: (B, 2m0, 2m1, 2m2).
 * restrict:     c[b, I, J, K] = v[I, J, K] * sum over the 4x4x4 fine cells 2I-1..2I+2 (per axis) of
 *   (1/4, 3/4, 3/4, 1/4)-products times q, the padded fine block (B, 2m0+2, 2m1+2, 2m2+2): the exact transpose
 *   of the interpolation.
 * Both sweep rows: the two (four) coarse (fine) rows that feed a row are combined first into a row buffer, then
 * the x axis is interleaved (summed) in one pass. Built by deepkrylov.mesh._kernels like _stencil7.c.
 */
#include <stdint.h>

#define DEFINE_TRANSFER(T, PROLONG, RESTRICT)                                                                  \
void PROLONG(const T *restrict P, T *restrict u, const T *restrict s, int64_t B, int64_t m0, int64_t m1,       \
             int64_t m2, int nthreads)                                                                         \
{                                                                                                              \
    const int64_t p1 = m1 + 2, p2 = m2 + 2, n0 = 2 * m0, n1 = 2 * m1, n2 = 2 * m2;                             \
    _Pragma("omp parallel num_threads(nthreads)")                                                              \
    {                                                                                                          \
    T t[p2];                                                                                                   \
    _Pragma("omp for collapse(2) schedule(static)")                                                            \
    for (int64_t b = 0; b < B; ++b)                                                                            \
      for (int64_t i = 0; i < n0; ++i) {                                                                       \
        const int64_t ci = i / 2 + 1, oi = (i & 1) ? 1 : -1;                                                   \
        for (int64_t j = 0; j < n1; ++j) {                                                                     \
            const int64_t cj = j / 2 + 1, oj = (j & 1) ? 1 : -1;                                               \
            const T *a = P + ((b * (m0 + 2) + ci) * p1 + cj) * p2;                                             \
            const T *bb = a + oj * p2, *c = a + oi * p1 * p2, *d = c + oj * p2;                                \
            _Pragma("omp simd")                                                                                \
            for (int64_t k = 0; k < p2; ++k)                                                                   \
                t[k] = (T)0.5625 * a[k] + (T)0.1875 * (bb[k] + c[k]) + (T)0.0625 * d[k];                       \
            T *ur = u + ((b * n0 + i) * n1 + j) * n2;                                                          \
            const T *sr = s + (i * n1 + j) * n2;                                                               \
            for (int64_t K = 0; K < m2; ++K) {                                                                 \
                ur[2 * K] += sr[2 * K] * ((T)0.75 * t[K + 1] + (T)0.25 * t[K]);                               \
                ur[2 * K + 1] += sr[2 * K + 1] * ((T)0.75 * t[K + 1] + (T)0.25 * t[K + 2]);                   \
            }                                                                                                  \
        }                                                                                                      \
      }                                                                                                        \
    }                                                                                                          \
}                                                                                                              \
                                                                                                               \
void RESTRICT(const T *restrict q, T *restrict c, const T *restrict v, int64_t B, int64_t m0, int64_t m1,      \
              int64_t m2, int nthreads)                                                                        \
{                                                                                                              \
    const int64_t q1 = 2 * m1 + 2, q2 = 2 * m2 + 2;                                                            \
    const T w[4] = {(T)0.25, (T)0.75, (T)0.75, (T)0.25};                                                       \
    _Pragma("omp parallel num_threads(nthreads)")                                                              \
    {                                                                                                          \
    T t[q2];                                                                                                   \
    _Pragma("omp for collapse(2) schedule(static)")                                                            \
    for (int64_t b = 0; b < B; ++b)                                                                            \
      for (int64_t I = 0; I < m0; ++I)                                                                         \
        for (int64_t J = 0; J < m1; ++J) {                                                                     \
            for (int64_t k = 0; k < q2; ++k) t[k] = 0;                                                         \
            for (int a = 0; a < 4; ++a)                                                                        \
                for (int e = 0; e < 4; ++e) {                                                                  \
                    const T wae = w[a] * w[e];                                                                 \
                    const T *row = q + ((b * (2 * m0 + 2) + 2 * I + a) * q1 + 2 * J + e) * q2;                 \
                    _Pragma("omp simd")                                                                        \
                    for (int64_t k = 0; k < q2; ++k) t[k] += wae * row[k];                                     \
                }                                                                                              \
            T *cr = c + ((b * m0 + I) * m1 + J) * m2;                                                          \
            const T *vr = v + (I * m1 + J) * m2;                                                               \
            for (int64_t K = 0; K < m2; ++K)                                                                   \
                cr[K] = vr[K] * ((T)0.25 * (t[2 * K] + t[2 * K + 3]) + (T)0.75 * (t[2 * K + 1] + t[2 * K + 2])); \
        }                                                                                                      \
    }                                                                                                          \
}

DEFINE_TRANSFER(double, prolong_add_f64, restrict_f64)
DEFINE_TRANSFER(float, prolong_add_f32, restrict_f32)
