/* One-pass 7-point stencil y = A x on a (B, n0, n1, n2) block, C order, for deepkrylov.mesh.DiffusionOperator.
 *
 * Neighbours outside the block come from six face arrays (ghost planes received from neighbouring ranks); a NULL
 * face means zero (Dirichlet/eliminated boundary, or a 2D/1D problem embedded with n0 = 1). Faces: axis 0
 * (B, n1, n2), axis 1 (B, n0, n2), axis 2 (B, n0, n1). Bit a of ``wrap`` set: axis a is periodic and held whole by
 * this block, whose own opposite plane is read in place of that axis's faces (no copies).
 *
 * Uniform form:  y = c x - t0 (x[i-1] + x[i+1]) - t1 (x[j-1] + x[j+1]) - t2 (x[k-1] + x[k+1])
 * General form:  y = d x - w0l x[i-1] - w0h x[i+1] - w1l x[j-1] - ... with (n0, n1, n2) coefficient arrays.
 * Compact form (stencil7c_*): constant coefficient, any mask and boundary mix. One uint16 code per cell:
 *   bits 0-5   the neighbour on face 0l, 0h, 1l, 1h, 2l, 2h is a fluid unknown (off-diagonal -t_axis);
 *   bits 6-8, 9-11, 12-14   m0, m1, m2: the diagonal in units of t_axis, d = (m0 t0 + m1 t1) + m2 t2 (in double);
 *   bit 15     not fluid: identity row (d = 1, no links).
 * It evaluates the general form's expression with w = t or 0 and the same d, in the same order, so both forms give
 * the same bits; it reads 2 bytes of coefficients per cell instead of 7 values.
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

/* The cell's row and its six neighbours along the kernel's axes: in the block, wrapped (a periodic axis the
   block holds whole), in a received face plane, or zero. */
#define NEIGHBOURS(T)                                                                                           \
    const T *xim = i > 0 ? xc - plane : (wrap & 1 ? xc + (n0 - 1) * plane                                       \
                                       : f0l ? f0l + (b * n1 + j) * n2 : zero);                                 \
    const T *xip = i < n0 - 1 ? xc + plane : (wrap & 1 ? xc - (n0 - 1) * plane                                  \
                                              : f0h ? f0h + (b * n1 + j) * n2 : zero);                          \
    const T *xjm = j > 0 ? xc - n2 : (wrap & 2 ? xc + (n1 - 1) * n2                                             \
                                     : f1l ? f1l + (b * n0 + i) * n2 : zero);                                   \
    const T *xjp = j < n1 - 1 ? xc + n2 : (wrap & 2 ? xc - (n1 - 1) * n2                                        \
                                          : f1h ? f1h + (b * n0 + i) * n2 : zero);                              \
    const T km = wrap & 4 ? xc[n2 - 1] : f2l ? f2l[(b * n0 + i) * n1 + j] : (T)0;                               \
    const T kp = wrap & 4 ? xc[0] : f2h ? f2h[(b * n0 + i) * n1 + j] : (T)0;

#define DEFINE_STENCIL(T, NAME, STREAM_ROW)                                                                      \
void NAME(const T *restrict x, T *restrict y, int64_t B, int64_t n0, int64_t n1, int64_t n2,                     \
          const T *f0l, const T *f0h, const T *f1l, const T *f1h, const T *f2l, const T *f2h,                  \
          double c, double t0, double t1, double t2,                                                           \
          const T *restrict d, const T *restrict w0l, const T *restrict w0h, const T *restrict w1l,            \
          const T *restrict w1h, const T *restrict w2l, const T *restrict w2h, const T *zero, int wrap,          \
          int nthreads, int stream)                                                                            \
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
                NEIGHBOURS(T)                                                                                   \
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

/* Compact form: see the header. Same traversal, tiles and streaming as DEFINE_STENCIL; each row by compact_row_*.
 * One cell, scalar: branch-free (selects by exact 0/1 factors, so that the portable row loop vectorizes); identity
 * rows have m = 0 and bit 15, d = 0 + 1. */
#define DEFINE_COMPACT_CELL(T, NAME)                                                                             \
static inline T NAME(int32_t cc, T xc, T xim, T xip, T xjm, T xjp, T xm, T xp, double t0, double t1, double t2) \
{                                                                                                              \
    const T A0 = (T)t0, A1 = (T)t1, A2 = (T)t2;                                                                \
    const T D = (T)((((double)((cc >> 6) & 7) * t0 + (double)((cc >> 9) & 7) * t1)                            \
                     + (double)((cc >> 12) & 7) * t2) + (double)(cc >> 15));                                  \
    return D * xc - (A0 * (T)(cc & 1)) * xim - (A0 * (T)((cc >> 1) & 1)) * xip                                 \
           - (A1 * (T)((cc >> 2) & 1)) * xjm - (A1 * (T)((cc >> 3) & 1)) * xjp                                 \
           - (A2 * (T)((cc >> 4) & 1)) * xm - (A2 * (T)((cc >> 5) & 1)) * xp;                                 \
}

DEFINE_COMPACT_CELL(double, compact_cell_f64)
DEFINE_COMPACT_CELL(float, compact_cell_f32)

/* The interior of a row, cells [1, n2 - 1) (both x neighbours in the row), from k0 on: portable loop. */
#define DEFINE_COMPACT_SPAN(T, NAME, CELL)                                                                       \
static inline void NAME(const T *restrict xc, const T *restrict xim, const T *restrict xip,                     \
                        const T *restrict xjm, const T *restrict xjp, const uint16_t *restrict code,           \
                        T *restrict yr, int64_t k0, int64_t n2, double t0, double t1, double t2)               \
{                                                                                                              \
    _Pragma("omp simd")                                                                                        \
    for (int64_t k = k0; k < n2 - 1; ++k)                                                                      \
        yr[k] = CELL(code[k], xc[k], xim[k], xip[k], xjm[k], xjp[k], xc[k - 1], xc[k + 1], t0, t1, t2);        \
}

DEFINE_COMPACT_SPAN(double, compact_span_f64, compact_cell_f64)
DEFINE_COMPACT_SPAN(float, compact_span_f32, compact_cell_f32)

#if defined(__AVX512F__) && defined(__AVX512DQ__)
/* AVX-512: codes widened to one integer lane per value, links as mask registers (a masked subtract leaves the
 * value where the general form subtracts 0 * x, the same bits for finite x), the diagonal in double as above. */
static inline __m512d compact_diag8(__m512i c, __m512d t0, __m512d t1, __m512d t2)
{
    const __m512i seven = _mm512_set1_epi64(7);
    __m512d d = _mm512_add_pd(_mm512_mul_pd(_mm512_cvtepi64_pd(_mm512_and_si512(_mm512_srli_epi64(c, 6), seven)), t0),
                              _mm512_mul_pd(_mm512_cvtepi64_pd(_mm512_and_si512(_mm512_srli_epi64(c, 9), seven)), t1));
    d = _mm512_add_pd(d, _mm512_mul_pd(_mm512_cvtepi64_pd(_mm512_and_si512(_mm512_srli_epi64(c, 12), seven)), t2));
    return _mm512_mask_mov_pd(d, _mm512_test_epi64_mask(c, _mm512_set1_epi64(0x8000)), _mm512_set1_pd(1.0));
}

static inline int64_t compact_vec_f64(const double *restrict xc, const double *restrict xim,
                                      const double *restrict xip, const double *restrict xjm,
                                      const double *restrict xjp, const uint16_t *restrict code,
                                      double *restrict yr, int64_t n2, double t0, double t1, double t2)
{
    const __m512d T0 = _mm512_set1_pd(t0), T1 = _mm512_set1_pd(t1), T2 = _mm512_set1_pd(t2);
    int64_t k = 1;
    for (; k + 8 <= n2 - 1; k += 8) {
        const __m512i c = _mm512_cvtepu16_epi64(_mm_loadu_si128((const __m128i *)(code + k)));
        __m512d acc = _mm512_mul_pd(compact_diag8(c, T0, T1, T2), _mm512_loadu_pd(xc + k));
#define LINK(bit, t, p) acc = _mm512_mask_sub_pd(acc, _mm512_test_epi64_mask(c, _mm512_set1_epi64(bit)), acc,     \
                                                 _mm512_mul_pd(t, _mm512_loadu_pd(p)))
        LINK(1, T0, xim + k); LINK(2, T0, xip + k); LINK(4, T1, xjm + k); LINK(8, T1, xjp + k);
        LINK(16, T2, xc + k - 1); LINK(32, T2, xc + k + 1);
#undef LINK
        _mm512_storeu_pd(yr + k, acc);
    }
    return k;
}

static inline int64_t compact_vec_f32(const float *restrict xc, const float *restrict xim,
                                      const float *restrict xip, const float *restrict xjm,
                                      const float *restrict xjp, const uint16_t *restrict code,
                                      float *restrict yr, int64_t n2, double t0, double t1, double t2)
{
    const __m512d T0 = _mm512_set1_pd(t0), T1 = _mm512_set1_pd(t1), T2 = _mm512_set1_pd(t2);
    const __m512 A0 = _mm512_set1_ps((float)t0), A1 = _mm512_set1_ps((float)t1), A2 = _mm512_set1_ps((float)t2);
    int64_t k = 1;
    for (; k + 16 <= n2 - 1; k += 16) {
        const __m256i c16 = _mm256_loadu_si256((const __m256i *)(code + k));
        const __m512i c = _mm512_cvtepu16_epi32(c16);
        const __m512d dlo = compact_diag8(_mm512_cvtepu16_epi64(_mm256_castsi256_si128(c16)), T0, T1, T2);
        const __m512d dhi = compact_diag8(_mm512_cvtepu16_epi64(_mm256_extracti128_si256(c16, 1)), T0, T1, T2);
        const __m512 d = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(dlo)), _mm512_cvtpd_ps(dhi), 1);
        __m512 acc = _mm512_mul_ps(d, _mm512_loadu_ps(xc + k));
#define LINK(bit, t, p) acc = _mm512_mask_sub_ps(acc, _mm512_test_epi32_mask(c, _mm512_set1_epi32(bit)), acc,     \
                                                 _mm512_mul_ps(t, _mm512_loadu_ps(p)))
        LINK(1, A0, xim + k); LINK(2, A0, xip + k); LINK(4, A1, xjm + k); LINK(8, A1, xjp + k);
        LINK(16, A2, xc + k - 1); LINK(32, A2, xc + k + 1);
#undef LINK
        _mm512_storeu_ps(yr + k, acc);
    }
    return k;
}
#elif defined(__AVX2__)
/* AVX2: as above with compare-generated lane masks: acc - (mask & t x) subtracts +0 where there is no link. */
static inline __m256d compact_diag4(__m128i c16, __m256d t0, __m256d t1, __m256d t2)
{
    const __m128i c = _mm_cvtepu16_epi32(c16), seven = _mm_set1_epi32(7);
    __m256d d = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(c, 6), seven)), t0),
                              _mm256_mul_pd(_mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(c, 9), seven)), t1));
    d = _mm256_add_pd(d, _mm256_mul_pd(_mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(c, 12), seven)), t2));
    const __m256i c64 = _mm256_cvtepu16_epi64(c16), b15 = _mm256_set1_epi64x(0x8000);
    const __m256i ident = _mm256_cmpeq_epi64(_mm256_and_si256(c64, b15), b15);
    return _mm256_blendv_pd(d, _mm256_set1_pd(1.0), _mm256_castsi256_pd(ident));
}

static inline int64_t compact_vec_f64(const double *restrict xc, const double *restrict xim,
                                      const double *restrict xip, const double *restrict xjm,
                                      const double *restrict xjp, const uint16_t *restrict code,
                                      double *restrict yr, int64_t n2, double t0, double t1, double t2)
{
    const __m256d T0 = _mm256_set1_pd(t0), T1 = _mm256_set1_pd(t1), T2 = _mm256_set1_pd(t2);
    int64_t k = 1;
    for (; k + 4 <= n2 - 1; k += 4) {
        const __m128i c16 = _mm_loadl_epi64((const __m128i *)(code + k));
        const __m256i c = _mm256_cvtepu16_epi64(c16);
        __m256d acc = _mm256_mul_pd(compact_diag4(c16, T0, T1, T2), _mm256_loadu_pd(xc + k));
#define LINK(bit, t, p) do {                                                                                  \
            const __m256i m = _mm256_set1_epi64x(bit);                                                         \
            acc = _mm256_sub_pd(acc, _mm256_and_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(c, m), m)), \
                                                   _mm256_mul_pd(t, _mm256_loadu_pd(p))));                     \
        } while (0)
        LINK(1, T0, xim + k); LINK(2, T0, xip + k); LINK(4, T1, xjm + k); LINK(8, T1, xjp + k);
        LINK(16, T2, xc + k - 1); LINK(32, T2, xc + k + 1);
#undef LINK
        _mm256_storeu_pd(yr + k, acc);
    }
    return k;
}

static inline int64_t compact_vec_f32(const float *restrict xc, const float *restrict xim,
                                      const float *restrict xip, const float *restrict xjm,
                                      const float *restrict xjp, const uint16_t *restrict code,
                                      float *restrict yr, int64_t n2, double t0, double t1, double t2)
{
    const __m256d T0 = _mm256_set1_pd(t0), T1 = _mm256_set1_pd(t1), T2 = _mm256_set1_pd(t2);
    const __m256 A0 = _mm256_set1_ps((float)t0), A1 = _mm256_set1_ps((float)t1), A2 = _mm256_set1_ps((float)t2);
    int64_t k = 1;
    for (; k + 8 <= n2 - 1; k += 8) {
        const __m128i c16 = _mm_loadu_si128((const __m128i *)(code + k));
        const __m256i c = _mm256_cvtepu16_epi32(c16);
        const __m128 dlo = _mm256_cvtpd_ps(compact_diag4(c16, T0, T1, T2));
        const __m128 dhi = _mm256_cvtpd_ps(compact_diag4(_mm_unpackhi_epi64(c16, c16), T0, T1, T2));
        __m256 acc = _mm256_mul_ps(_mm256_insertf128_ps(_mm256_castps128_ps256(dlo), dhi, 1), _mm256_loadu_ps(xc + k));
#define LINK(bit, t, p) do {                                                                                  \
            const __m256i m = _mm256_set1_epi32(bit);                                                          \
            acc = _mm256_sub_ps(acc, _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(c, m), m)), \
                                                   _mm256_mul_ps(t, _mm256_loadu_ps(p))));                     \
        } while (0)
        LINK(1, A0, xim + k); LINK(2, A0, xip + k); LINK(4, A1, xjm + k); LINK(8, A1, xjp + k);
        LINK(16, A2, xc + k - 1); LINK(32, A2, xc + k + 1);
#undef LINK
        _mm256_storeu_ps(yr + k, acc);
    }
    return k;
}
#else
#define compact_vec_f64(xc, xim, xip, xjm, xjp, code, yr, n2, t0, t1, t2) ((int64_t)1)
#define compact_vec_f32(xc, xim, xip, xjm, xjp, code, yr, n2, t0, t1, t2) ((int64_t)1)
#endif

#define DEFINE_COMPACT(T, NAME, STREAM_ROW, CELL, SPAN, VEC)                                                     \
void NAME(const T *restrict x, T *restrict y, int64_t B, int64_t n0, int64_t n1, int64_t n2,                     \
          const T *f0l, const T *f0h, const T *f1l, const T *f1h, const T *f2l, const T *f2h,                  \
          double t0, double t1, double t2, const uint16_t *restrict code, const T *zero, int wrap,              \
          int nthreads, int stream)                                                                            \
{                                                                                                              \
    const int64_t plane = n1 * n2;                                                                             \
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
                NEIGHBOURS(T)                                                                                   \
                const uint16_t *cr = code + (i * n1 + j) * n2;                                                 \
                T *const yout = y + row;                                                                       \
                T *yr = stream ? tmp : yout;                                                                   \
                if (n2 == 1) {                                                                                 \
                    yout[0] = CELL(cr[0], xc[0], xim[0], xip[0], xjm[0], xjp[0], km, kp, t0, t1, t2);          \
                    continue;                                                                                  \
                }                                                                                              \
                yr[0] = CELL(cr[0], xc[0], xim[0], xip[0], xjm[0], xjp[0], km, xc[1], t0, t1, t2);             \
                SPAN(xc, xim, xip, xjm, xjp, cr, yr, VEC(xc, xim, xip, xjm, xjp, cr, yr, n2, t0, t1, t2), n2,    \
                     t0, t1, t2);                                                                              \
                const int64_t e = n2 - 1;                                                                      \
                yr[e] = CELL(cr[e], xc[e], xim[e], xip[e], xjm[e], xjp[e], xc[e - 1], kp, t0, t1, t2);         \
                if (stream) STREAM_ROW(yout, tmp, n2);                                                         \
            }                                                                                                  \
        }                                                                                                      \
      }                                                                                                        \
    }                                                                                                          \
    if (stream) stream_fence();                                                                                \
    }                                                                                                          \
}

DEFINE_COMPACT(double, stencil7c_f64, stream_row_f64, compact_cell_f64, compact_span_f64, compact_vec_f64)
DEFINE_COMPACT(float, stencil7c_f32, stream_row_f32, compact_cell_f32, compact_span_f32, compact_vec_f32)
