/* One-pass 7-point stencil y = A x on a (B, n0, n1, n2) block, C order, for deepkrylov.mesh.DiffusionOperator.
 *
 * Neighbours outside the block come from six face arrays (ghost planes received from neighbouring ranks, or the
 * opposite face for a periodic axis on one rank); a NULL face means zero (Dirichlet/eliminated boundary, or a
 * 2D/1D problem embedded with n0 = 1). Faces: axis 0 (B, n1, n2), axis 1 (B, n0, n2), axis 2 (B, n0, n1).
 *
 * Uniform form:  y = c x - t0 (x[i-1] + x[i+1]) - t1 (x[j-1] + x[j+1]) - t2 (x[k-1] + x[k+1])
 * General form:  y = d x - w0l x[i-1] - w0h x[i+1] - w1l x[j-1] - ... with (n0, n1, n2) coefficient arrays.
 *
 * The loop reads x once (rows i-1 and i+1 come from cache) and writes y once: the cost is the bytes moved.
 * With stream != 0 (y larger than the last-level cache) each row is computed into an L1 buffer and written with
 * non-temporal stores, which skip the read-for-ownership of y: 16 instead of 24 bytes of traffic per cell.
 * Built with -O3 -fopenmp by deepkrylov.mesh._kernels and called through ctypes.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#define STREAM_MAX_ROW 4096

static inline void stream_row_f64(double *restrict dst, const double *restrict src, int64_t n)
{
    int64_t k = 0;
#if defined(__AVX__)
    for (; k < n && ((uintptr_t)(dst + k) & 31); ++k) dst[k] = src[k];
    for (; k + 4 <= n; k += 4) _mm256_stream_pd(dst + k, _mm256_loadu_pd(src + k));
#endif
    for (; k < n; ++k) dst[k] = src[k];
}

static inline void stream_row_f32(float *restrict dst, const float *restrict src, int64_t n)
{
    int64_t k = 0;
#if defined(__AVX__)
    for (; k < n && ((uintptr_t)(dst + k) & 31); ++k) dst[k] = src[k];
    for (; k + 8 <= n; k += 8) _mm256_stream_ps(dst + k, _mm256_loadu_ps(src + k));
#endif
    for (; k < n; ++k) dst[k] = src[k];
}

static inline void stream_fence(void)
{
#if defined(__AVX__)
    _mm_sfence();
#endif
}

#define DEFINE_STENCIL(T, NAME, STREAM_ROW)                                                                      \
void NAME(const T *restrict x, T *restrict y, int64_t B, int64_t n0, int64_t n1, int64_t n2,                     \
          const T *f0l, const T *f0h, const T *f1l, const T *f1h, const T *f2l, const T *f2h,                  \
          double c, double t0, double t1, double t2,                                                           \
          const T *restrict d, const T *restrict w0l, const T *restrict w0h, const T *restrict w1l,            \
          const T *restrict w1h, const T *restrict w2l, const T *restrict w2h, const T *zero, int nthreads,      \
          int stream)                                                                                          \
{                                                                                                              \
    const int64_t plane = n1 * n2;                                                                             \
    /* tiles of jt rows: planes i-1, i, i+1 of a tile stay in L2 while i advances */                          \
    int64_t jt = (int64_t)(196608 / (3 * n2 * (int64_t)sizeof(T)));                                           \
    if (jt < 1) jt = 1;                                                                                        \
    if (jt > n1) jt = n1;                                                                                      \
    const int64_t ntiles = (n1 + jt - 1) / jt;                                                                 \
    if (n2 > STREAM_MAX_ROW) stream = 0;                                                                       \
    _Pragma("omp parallel num_threads(nthreads)")                                                              \
    {                                                                                                          \
    T tmp[stream ? n2 : 1] __attribute__((aligned(64)));                                                       \
    _Pragma("omp for collapse(2) schedule(static)")                                                            \
    for (int64_t b = 0; b < B; ++b) {                                                                          \
      for (int64_t tile = 0; tile < ntiles; ++tile) {                                                          \
        const int64_t j0 = tile * jt, j1 = j0 + jt < n1 ? j0 + jt : n1;                                        \
        for (int64_t i = 0; i < n0; ++i) {                                                                     \
            for (int64_t j = j0; j < j1; ++j) {                                                                \
                const int64_t row = ((b * n0 + i) * n1 + j) * n2;                                              \
                const T *xc = x + row;                                                                         \
                const T *xim = i > 0 ? xc - plane : (f0l ? f0l + (b * n1 + j) * n2 : zero);                    \
                const T *xip = i < n0 - 1 ? xc + plane : (f0h ? f0h + (b * n1 + j) * n2 : zero);               \
                const T *xjm = j > 0 ? xc - n2 : (f1l ? f1l + (b * n0 + i) * n2 : zero);                       \
                const T *xjp = j < n1 - 1 ? xc + n2 : (f1h ? f1h + (b * n0 + i) * n2 : zero);                  \
                const T km = f2l ? f2l[(b * n0 + i) * n1 + j] : (T)0;                                          \
                const T kp = f2h ? f2h[(b * n0 + i) * n1 + j] : (T)0;                                          \
                T *const yout = y + row;                                                                       \
                T *yr = stream ? tmp : yout;                                                                   \
                if (d == NULL) {                                                                               \
                    const T C = (T)c, A0 = (T)t0, A1 = (T)t1, A2 = (T)t2;                                      \
                    if (n2 == 1) {                                                                             \
                        yout[0] = C * xc[0] - A0 * (xim[0] + xip[0]) - A1 * (xjm[0] + xjp[0]) - A2 * (km + kp); \
                        continue;                                                                              \
                    }                                                                                          \
                    yr[0] = C * xc[0] - A0 * (xim[0] + xip[0]) - A1 * (xjm[0] + xjp[0]) - A2 * (km + xc[1]);  \
                    _Pragma("omp simd")                                                                        \
                    for (int64_t k = 1; k < n2 - 1; ++k)                                                       \
                        yr[k] = C * xc[k] - A0 * (xim[k] + xip[k]) - A1 * (xjm[k] + xjp[k])                    \
                                - A2 * (xc[k - 1] + xc[k + 1]);                                                \
                    const int64_t e = n2 - 1;                                                                  \
                    yr[e] = C * xc[e] - A0 * (xim[e] + xip[e]) - A1 * (xjm[e] + xjp[e]) - A2 * (xc[e - 1] + kp); \
                } else {                                                                                       \
                    const int64_t cr = (i * n1 + j) * n2;                                                      \
                    const T *D = d + cr, *L0 = w0l + cr, *H0 = w0h + cr, *L1 = w1l + cr, *H1 = w1h + cr;      \
                    const T *L2 = w2l + cr, *H2 = w2h + cr;                                                    \
                    _Pragma("omp simd")                                                                        \
                    for (int64_t k = 0; k < n2; ++k) {                                                         \
                        const T xm = k > 0 ? xc[k - 1] : km;                                                   \
                        const T xp = k < n2 - 1 ? xc[k + 1] : kp;                                              \
                        yr[k] = D[k] * xc[k] - L0[k] * xim[k] - H0[k] * xip[k] - L1[k] * xjm[k]                \
                                - H1[k] * xjp[k] - L2[k] * xm - H2[k] * xp;                                    \
                    }                                                                                          \
                }                                                                                              \
                if (stream) STREAM_ROW(yout, tmp, n2);                                                         \
            }                                                                                                  \
        }                                                                                                      \
      }                                                                                                        \
    }                                                                                                          \
    if (stream) stream_fence();                                                                                \
    }                                                                                                          \
}

DEFINE_STENCIL(double, stencil7_f64, stream_row_f64)
DEFINE_STENCIL(float, stencil7_f32, stream_row_f32)
