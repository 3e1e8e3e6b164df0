/* C support code of conv3x3.py, pasted into the module Theano compiles for each op.

   The 'same' 3x3 cross-correlation of float32 images x (n, C_in, H, W) with filters
   g (C_out, C_in, 3, 3), plus a bias b (C_out,) and an activation f, and its weight
   gradient, two ways:

   - Winograd F(2x2, 3x3) (Lavin & Gray 2016): 4x4 input tiles d at stride 2,
     U = G g G^T, V = B^T d B, M[p] = U[p] V[p] for the 16 tile positions p (one
     matrix product each), Y = A^T m A;
   - im2col: the (9 C_in, block * H * W) patch matrix of a block of images, one sgemm.

   Winograd: each OpenMP thread takes whole blocks of images (transforms and 16 products:
   sgemm_ with OpenBLAS held at one thread, or for few input channels this file's loops)
   into its own cache-sized buffers; the weight gradient adds the threads' partial sums in
   thread order, so results depend on the thread count only. im2col: sgemm_ from serial
   code (OpenBLAS runs its own threads) and its copies in OpenMP loops; the two thread
   pools take turns, so their idle threads must sleep rather than spin on the cores the
   other pool needs (backend.THREAD_WAIT). Tensors are C-contiguous; per-tile arrays are
   laid out (16, channels, tiles) with tile t = (image, ty, tx) of the current block. */

#ifdef _OPENMP
#include <omp.h>
#endif
/* OpenBLAS's thread count, if OpenBLAS is the BLAS (weak: absent from other BLAS). */
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

enum { C3_WINOGRAD = 0, C3_IM2COL = 1, C3_AUTO = 2 };
enum { C3_LINEAR = 0, C3_LEAKY_RELU = 1, C3_SOFTPLUS = 2 };

/* Floats between the 16 (C, T) planes of a per-tile array: keeps the 16 streams of a
   transform off one cache set (planes of a power-of-two size would share it). */
#define C3_PLANE_PAD 16
/* impl 'auto': im2col below this many input channels, Winograd from it on. */
#define C3_AUTO_MIN_WINOGRAD_CIN 8

/* ------------------------------------------------------------------ helpers */

/* Eight floats at any float's address. The loops over a row below that take vectors of 8
   end with the vector that ends at the row's end (it computes some values again, to the
   same bits): GCC's loops left up to 7 floats of each short row (MNIST's 14 tiles, 28 and
   30 floats) to scalar code. */
typedef float c3_v8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int c3_i8 __attribute__((vector_size(32)));

/* The start of the vector of 8 floats after k in a row of n >= 8: k, or n - 8 for the last. */
static inline npy_intp c3_v8_at(npy_intp k, npy_intp n)
{
    return k + 8 <= n ? k : n - 8;
}

/* Images per block: as many as fit in workspace floats at floats_per_image each, at least 1. */
static npy_intp c3_block(npy_intp n, npy_intp floats_per_image, npy_intp workspace)
{
    npy_intp nb = workspace / floats_per_image;
    if (nb > n) nb = n;
    return nb < 1 ? 1 : nb;
}

/* out[k] = f(in[k] + bias) for k < len; f the activation (leaky slope for negatives).
   Rows of 8 floats and more, not a multiple of 8, in vectors of 8 (c3_v8), but softplus;
   GCC's own loops were as fast on multiples of 8 (and faster with the leaky ReLU). */
static void c3_bias_activate(float *__restrict__ out, const float *__restrict__ in, npy_intp len, float bias,
                             int act, float slope)
{
    npy_intp k;
    if (len >= 8 && len % 8 && act != C3_SOFTPLUS) {
        for (k = 0; k < len; k += 8) {
            const npy_intp at = c3_v8_at(k, len);
            const c3_v8 v = *(const c3_v8 *)(in + at) + bias;
            *(c3_v8 *)(out + at) = act == C3_LEAKY_RELU ? (v > 0.f ? v : slope * v) : v;
        }
        return;
    }
    if (act == C3_LEAKY_RELU) {
        for (k = 0; k < len; k++) {
            float v = in[k] + bias;
            out[k] = v > 0.f ? v : slope * v;
        }
    } else if (act == C3_SOFTPLUS) {
        for (k = 0; k < len; k++) {  /* log(1 + e^v) = max(v, 0) + log(1 + e^-|v|) */
            float v = in[k] + bias;
            out[k] = fmaxf(v, 0.f) + log1pf(expf(-fabsf(v)));
        }
    } else {
        for (k = 0; k < len; k++)
            out[k] = in[k] + bias;
    }
}

/* OpenMP threads that may each call sgemm_ at once: all of them when OpenBLAS can be held
   at one thread (c3_blas_threads), else one (another BLAS may not allow concurrent calls). */
static int c3_threads(void)
{
#ifdef _OPENMP
    if (openblas_set_num_threads && openblas_get_num_threads)
        return omp_get_max_threads();
#endif
    return 1;
}

static int c3_thread(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Sets OpenBLAS's thread count to `threads` when several OpenMP threads will call sgemm_,
   and returns the count to restore (0: nothing to do). */
static int c3_blas_threads(int omp_threads, int threads)
{
    int before;
    if (omp_threads < 2)
        return 0;
    before = openblas_get_num_threads();
    openblas_set_num_threads(threads);
    return before;
}

/* Images per block when `threads` threads share n images: at most nb, at least one block each. */
static npy_intp c3_share(npy_intp n, npy_intp nb, int threads)
{
    const npy_intp fair = (n + threads - 1) / threads;
    return fair < nb ? (fair < 1 ? 1 : fair) : nb;
}

/* C = op(A) op(B) + beta C for column-major A, B, C (Fortran BLAS, OpenBLAS's threads). */
static void c3_sgemm(char ta, char tb, npy_intp m, npy_intp n, npy_intp k,
                     const float *A, npy_intp lda, const float *B, npy_intp ldb,
                     float beta, float *C, npy_intp ldc)
{
    int im = (int)m, in = (int)n, ik = (int)k, ilda = (int)lda, ildb = (int)ldb, ildc = (int)ldc;
    float one = 1.f;
    sgemm_(&ta, &tb, &im, &in, &ik, &one, A, &ilda, B, &ildb, &beta, C, &ildc);
}

/* Floats per plane of a (16, C, T) per-tile array. */
static npy_intp c3_plane(npy_intp C, npy_intp T)
{
    return C * T + C3_PLANE_PAD;
}

/* Sets *failed (shared) from a thread of a parallel region whose scratch allocation failed. */
static void c3_flag(int *failed, int err)
{
    if (err) {
        #pragma omp atomic write
        *failed = 1;
    }
}

/* ------------------------------------------------------------------ Winograd transforms

   Serial: each thread transforms its own block. Those with scratch memory return -1 if
   they could not allocate it. The rows' pointers never overlap and say so (__restrict__):
   GCC 12 otherwise left the output transform scalar, its sixteen streams too many to
   check for overlap at run time. */

/* U = G g G^T for each of the k_count 3x3 filters: g (k_count, 3, 3) -> U (16, k_count).
   G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]. */
static void c3_filter_transform(const float *g, npy_intp k_count, float *U)
{
    npy_intp k;
    for (k = 0; k < k_count; k++) {
        const float *f = g + 9 * k;
        float Gg[4][3];
        int i, j;
        for (j = 0; j < 3; j++) {  /* G g: rows of g combined */
            Gg[0][j] = f[j];
            Gg[1][j] = .5f * (f[j] + f[3 + j] + f[6 + j]);
            Gg[2][j] = .5f * (f[j] - f[3 + j] + f[6 + j]);
            Gg[3][j] = f[6 + j];
        }
        for (i = 0; i < 4; i++) {  /* (G g) G^T */
            float a = Gg[i][0], b = Gg[i][1], c = Gg[i][2];
            U[(4 * i + 0) * k_count + k] = a;
            U[(4 * i + 1) * k_count + k] = .5f * (a + b + c);
            U[(4 * i + 2) * k_count + k] = .5f * (a - b + c);
            U[(4 * i + 3) * k_count + k] = c;
        }
    }
}

/* dg = G^T dU G, the gradient through the filter transform: dU (16, k_count) -> dg (k_count, 3, 3). */
static void c3_filter_transform_grad(const float *dU, npy_intp k_count, float *dg)
{
    npy_intp k;
    for (k = 0; k < k_count; k++) {
        float t[3][4];
        int i, j;
        for (j = 0; j < 4; j++) {  /* G^T dU */
            float d0 = dU[j * k_count + k], d1 = dU[(4 + j) * k_count + k];
            float d2 = dU[(8 + j) * k_count + k], d3 = dU[(12 + j) * k_count + k];
            t[0][j] = d0 + .5f * (d1 + d2);
            t[1][j] = .5f * (d1 - d2);
            t[2][j] = .5f * (d1 + d2) + d3;
        }
        for (i = 0; i < 3; i++) {  /* (G^T dU) G */
            float a = t[i][0], b = t[i][1], c = t[i][2], e = t[i][3];
            dg[9 * k + 3 * i + 0] = a + .5f * (b + c);
            dg[9 * k + 3 * i + 1] = .5f * (b - c);
            dg[9 * k + 3 * i + 2] = .5f * (b + c) + e;
        }
    }
}

/* The even- and odd-numbered of 16 floats. */
static inline void c3_evens_odds(const float *s, c3_v8 *even, c3_v8 *odd)
{
    const c3_v8 lo = *(const c3_v8 *)s, hi = *(const c3_v8 *)(s + 8);
    const c3_i8 evens = {0, 2, 4, 6, 8, 10, 12, 14}, odds = {1, 3, 5, 7, 9, 11, 13, 15};
    *even = __builtin_shuffle(lo, hi, evens);
    *odd = __builtin_shuffle(lo, hi, odds);
}

/* dst[k] = src[k] for k < n; from 8 floats on in vectors of 8 (c3_v8): memcpy was a
   library call for each of MNIST's 28-float rows. */
static inline void c3_copy_row(float *__restrict__ dst, const float *__restrict__ src, npy_intp n)
{
    npy_intp k;
    if (n < 8) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (k = 0; k < n; k += 8) {
        const npy_intp at = c3_v8_at(k, n);
        *(c3_v8 *)(dst + at) = *(const c3_v8 *)(src + at);
    }
}

/* B^T d B for one row of tw tiles whose 4 padded input rows start at r (row length pw):
   V[p * pstride + tx] for p = 4 i + j. u: 4 pw floats of scratch.
   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]. From 8 floats and
   8 tiles on in vectors of 8 (c3_v8); every other float by one permutation per vector. */
static void c3_input_tile_row(const float *__restrict__ r, npy_intp pw, npy_intp tw, float *__restrict__ u,
                              float *__restrict__ V, npy_intp pstride)
{
    const float *r0 = r, *r1 = r + pw, *r2 = r + 2 * pw, *r3 = r + 3 * pw;
    npy_intp k, tx;
    int i;
    if (pw >= 8) {  /* B^T d */
        for (k = 0; k < pw; k += 8) {
            const npy_intp at = c3_v8_at(k, pw);
            const c3_v8 a = *(const c3_v8 *)(r0 + at), b = *(const c3_v8 *)(r1 + at);
            const c3_v8 c = *(const c3_v8 *)(r2 + at), e = *(const c3_v8 *)(r3 + at);
            *(c3_v8 *)(u + at) = a - c;
            *(c3_v8 *)(u + pw + at) = b + c;
            *(c3_v8 *)(u + 2 * pw + at) = c - b;
            *(c3_v8 *)(u + 3 * pw + at) = b - e;
        }
    } else {
        for (k = 0; k < pw; k++) {
            u[k] = r0[k] - r2[k];
            u[pw + k] = r1[k] + r2[k];
            u[2 * pw + k] = r2[k] - r1[k];
            u[3 * pw + k] = r1[k] - r3[k];
        }
    }
    for (i = 0; i < 4; i++) {  /* (B^T d) B */
        const float *ui = u + i * pw;
        float *v0 = V + 4 * i * pstride, *v1 = v0 + pstride, *v2 = v1 + pstride, *v3 = v2 + pstride;
        if (tw >= 8) {
            for (tx = 0; tx < tw; tx += 8) {
                const npy_intp at = c3_v8_at(tx, tw);
                c3_v8 a, b, c, e;
                c3_evens_odds(ui + 2 * at, &a, &b);
                c3_evens_odds(ui + 2 * at + 2, &c, &e);
                *(c3_v8 *)(v0 + at) = a - c;
                *(c3_v8 *)(v1 + at) = b + c;
                *(c3_v8 *)(v2 + at) = c - b;
                *(c3_v8 *)(v3 + at) = b - e;
            }
            continue;
        }
        for (tx = 0; tx < tw; tx++) {
            float a = ui[2 * tx], b = ui[2 * tx + 1], c = ui[2 * tx + 2], e = ui[2 * tx + 3];
            v0[tx] = a - c;
            v1[tx] = b + c;
            v2[tx] = c - b;
            v3[tx] = b - e;
        }
    }
}

/* V = B^T d B for every tile of nb images x (nb, C, H, W) -> V (16, C, nb th tw).
   Each channel is first copied into a zero-padded (2 th + 2, 2 tw + 2) image
   (one row and column of 'same' padding in front, the rest behind). */
static int c3_input_transform(const float *x, npy_intp nb, npy_intp C, npy_intp H, npy_intp W,
                              float *V)
{
    const npy_intp th = (H + 1) / 2, tw = (W + 1) / 2, ph = 2 * th + 2, pw = 2 * tw + 2;
    const npy_intp T = nb * th * tw, pstride = c3_plane(C, T);
    float *d = (float *)calloc((size_t)(ph + 4) * pw, sizeof(float));  /* image, then u */
    npy_intp ic;
    for (ic = 0; ic < nb * C; ic++) {
        const npy_intp i = ic / C, c = ic % C;
        const float *xc = x + ic * H * W;
        npy_intp h, ty;
        if (!d) continue;
        for (h = 0; h < H; h++)
            c3_copy_row(d + (h + 1) * pw + 1, xc + h * W, W);
        for (ty = 0; ty < th; ty++)
            c3_input_tile_row(d + 2 * ty * pw, pw, tw, d + ph * pw,
                              V + c * T + (i * th + ty) * tw, pstride);
    }
    free(d);
    return d ? 0 : -1;
}

/* A^T m A for one row of tw tiles, m_p = M[p * pstride + tx], into the two output rows
   y0, y1 (2 tw floats each). A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]. From 8 tiles on in
   vectors of 8 tiles, as c3_input_tile_row. */
static void c3_output_tile_row(const float *__restrict__ M, npy_intp pstride, npy_intp tw,
                               float *__restrict__ y0, float *__restrict__ y1)
{
    npy_intp tx;
    if (tw >= 8) {
        const c3_i8 low = {0, 8, 1, 9, 2, 10, 3, 11}, high = {4, 12, 5, 13, 6, 14, 7, 15};
        for (tx = 0; tx < tw; tx += 8) {
            const npy_intp at = c3_v8_at(tx, tw);
            c3_v8 m[16], s0[4], s1[4], e, o;
            int p, j;
            for (p = 0; p < 16; p++)
                m[p] = *(const c3_v8 *)(M + p * pstride + at);
            for (j = 0; j < 4; j++) {  /* A^T m */
                s0[j] = m[j] + m[4 + j] + m[8 + j];
                s1[j] = m[4 + j] - m[8 + j] - m[12 + j];
            }
            e = s0[0] + s0[1] + s0[2];  /* (A^T m) A, interleaved */
            o = s0[1] - s0[2] - s0[3];
            *(c3_v8 *)(y0 + 2 * at) = __builtin_shuffle(e, o, low);
            *(c3_v8 *)(y0 + 2 * at + 8) = __builtin_shuffle(e, o, high);
            e = s1[0] + s1[1] + s1[2];
            o = s1[1] - s1[2] - s1[3];
            *(c3_v8 *)(y1 + 2 * at) = __builtin_shuffle(e, o, low);
            *(c3_v8 *)(y1 + 2 * at + 8) = __builtin_shuffle(e, o, high);
        }
        return;
    }
    for (tx = 0; tx < tw; tx++) {
        float m[16], s0[4], s1[4];
        int p, j;
        for (p = 0; p < 16; p++)
            m[p] = M[p * pstride + tx];
        for (j = 0; j < 4; j++) {  /* A^T m */
            s0[j] = m[j] + m[4 + j] + m[8 + j];
            s1[j] = m[4 + j] - m[8 + j] - m[12 + j];
        }
        y0[2 * tx] = s0[0] + s0[1] + s0[2];  /* (A^T m) A */
        y0[2 * tx + 1] = s0[1] - s0[2] - s0[3];
        y1[2 * tx] = s1[0] + s1[1] + s1[2];
        y1[2 * tx + 1] = s1[1] - s1[2] - s1[3];
    }
}

/* y = f(A^T m A + b), cropped: M (16, Co, nb th tw) -> y (nb, Co, H, W); b may be NULL. */
static int c3_output_transform(const float *M, npy_intp nb, npy_intp Co, npy_intp H, npy_intp W,
                               const float *b, int act, float slope, float *y)
{
    const npy_intp th = (H + 1) / 2, tw = (W + 1) / 2, T = nb * th * tw, pstride = c3_plane(Co, T);
    float *rows = (float *)malloc(4 * tw * sizeof(float));  /* two output rows */
    npy_intp ic;
    for (ic = 0; ic < nb * Co; ic++) {
        const npy_intp i = ic / Co, co = ic % Co;
        const float bias = b ? b[co] : 0.f;
        float *yc = y + ic * H * W;
        npy_intp ty;
        if (!rows) continue;
        for (ty = 0; ty < th; ty++) {
            c3_output_tile_row(M + co * T + (i * th + ty) * tw, pstride, tw, rows, rows + 2 * tw);
            c3_bias_activate(yc + 2 * ty * W, rows, W, bias, act, slope);
            if (2 * ty + 1 < H)
                c3_bias_activate(yc + (2 * ty + 1) * W, rows + 2 * tw, W, bias, act, slope);
        }
    }
    free(rows);
    return rows ? 0 : -1;
}

/* The four rows (a, b) of dM for one tile position's row i of A dY, (a, b) its even and
   odd columns. */
static inline void c3_gradient_tiles(c3_v8 a, c3_v8 b, float *d0, npy_intp pstride)
{
    *(c3_v8 *)d0 = a;
    *(c3_v8 *)(d0 + pstride) = a + b;
    *(c3_v8 *)(d0 + 2 * pstride) = a - b;
    *(c3_v8 *)(d0 + 3 * pstride) = -b;
}

/* A dY A^T for one row of tw tiles from the two gradient rows g0, g1 (2 tw floats, zero
   past the image): dM[p * pstride + tx]. r: 8 tw floats of scratch.
   A = [[1, 0], [1, 1], [1, -1], [0, -1]]. From 8 tiles on in vectors of 8 (c3_v8), the even
   and odd columns of g0 and g1 combined in registers. */
static void c3_gradient_tile_row(const float *__restrict__ g0, const float *__restrict__ g1, npy_intp tw,
                                 float *__restrict__ r, float *__restrict__ dM, npy_intp pstride)
{
    const npy_intp w2 = 2 * tw;
    npy_intp k, tx;
    int i;
    if (tw >= 8) {
        for (tx = 0; tx < tw; tx += 8) {
            const npy_intp at = c3_v8_at(tx, tw);
            c3_v8 a0, b0, a1, b1;
            c3_evens_odds(g0 + 2 * at, &a0, &b0);
            c3_evens_odds(g1 + 2 * at, &a1, &b1);
            c3_gradient_tiles(a0, b0, dM + at, pstride);  /* A dY's rows g0, g0 + g1, g0 - g1, -g1 */
            c3_gradient_tiles(a0 + a1, b0 + b1, dM + 4 * pstride + at, pstride);
            c3_gradient_tiles(a0 - a1, b0 - b1, dM + 8 * pstride + at, pstride);
            c3_gradient_tiles(-a1, -b1, dM + 12 * pstride + at, pstride);
        }
        return;
    }
    for (k = 0; k < w2; k++) {  /* A dY */
        r[k] = g0[k];
        r[w2 + k] = g0[k] + g1[k];
        r[2 * w2 + k] = g0[k] - g1[k];
        r[3 * w2 + k] = -g1[k];
    }
    for (i = 0; i < 4; i++) {  /* (A dY) A^T */
        const float *ri = r + i * w2;
        float *d0 = dM + 4 * i * pstride, *d1 = d0 + pstride, *d2 = d1 + pstride, *d3 = d2 + pstride;
        for (tx = 0; tx < tw; tx++) {
            float a = ri[2 * tx], b = ri[2 * tx + 1];
            d0[tx] = a;
            d1[tx] = a + b;
            d2[tx] = a - b;
            d3[tx] = -b;
        }
    }
}

/* dM = A dY A^T for every tile of the output gradient dy (nb, Co, H, W) -> dM (16, Co, nb th tw),
   the transpose of the output transform. */
static int c3_gradient_transform(const float *dy, npy_intp nb, npy_intp Co, npy_intp H, npy_intp W,
                                 float *dM)
{
    const npy_intp th = (H + 1) / 2, tw = (W + 1) / 2, T = nb * th * tw, pstride = c3_plane(Co, T);
    float *rows = (float *)calloc(12 * tw, sizeof(float));  /* two zero-padded rows, then r */
    npy_intp ic;
    for (ic = 0; ic < nb * Co; ic++) {
        const npy_intp i = ic / Co, co = ic % Co;
        const float *gc = dy + ic * H * W;
        npy_intp ty;
        if (!rows) continue;
        for (ty = 0; ty < th; ty++) {
            c3_copy_row(rows, gc + 2 * ty * W, W);
            if (2 * ty + 1 < H)
                c3_copy_row(rows + 2 * tw, gc + (2 * ty + 1) * W, W);
            else
                memset(rows + 2 * tw, 0, 2 * tw * sizeof(float));
            c3_gradient_tile_row(rows, rows + 2 * tw, tw, rows + 4 * tw,
                                 dM + co * T + (i * th + ty) * tw, pstride);
        }
    }
    free(rows);
    return rows ? 0 : -1;
}

/* ------------------------------------------------------------------ Winograd products

   M[p] = U[p] V[p] for one tile position p, U (Co, Ci), V (Ci, T), M (Co, T), row-major,
   by the loops below for at most C3_OWN_PRODUCT_MAX_CIN input channels: there V[p] stays
   in the core's first-level cache, and sgemm_ spent about as long copying V into its packed
   layout as multiplying (MNIST's 20 channels, 196 tiles: these loops 3x faster; at 64
   channels and more no faster, so sgemm_ there). Each element is summed over ci in order. */
#define C3_OWN_PRODUCT_MAX_CIN 32

/* The widest vector of floats the target has, loaded and stored at any float's address. */
#ifdef __AVX512F__
typedef float c3_vec __attribute__((vector_size(64), aligned(4), may_alias));
#else
typedef float c3_vec __attribute__((vector_size(32), aligned(4), may_alias));
#endif
#define C3_VEC_FLOATS ((npy_intp)(sizeof(c3_vec) / sizeof(float)))

/* R rows of M from R rows of U, NV vectors of columns: R NV sums held in registers. */
template <int R, int NV>
static inline void c3_product_tile(const float *U, const float *V, npy_intp Ci, npy_intp T, float *M)
{
    c3_vec acc[R][NV] = {};
    for (npy_intp ci = 0; ci < Ci; ci++) {
        c3_vec v[NV];
        int r, j;
        for (j = 0; j < NV; j++)
            v[j] = ((const c3_vec *)(V + ci * T))[j];
        for (r = 0; r < R; r++)
            for (j = 0; j < NV; j++)
                acc[r][j] += U[r * Ci + ci] * v[j];
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NV; j++)
            ((c3_vec *)(M + r * T))[j] = acc[r][j];
}

/* R rows of M from R rows of U, one column. */
template <int R>
static inline void c3_product_column(const float *U, const float *V, npy_intp Ci, npy_intp T, float *M)
{
    float acc[R] = {};
    for (npy_intp ci = 0; ci < Ci; ci++)
        for (int r = 0; r < R; r++)
            acc[r] = fmaf(U[r * Ci + ci], V[ci * T], acc[r]);
    for (int r = 0; r < R; r++)
        M[r * T] = acc[r];
}

/* R rows of M, all T columns: three vectors at a time, then one; the columns left over by
   the vector that ends at column T (it computes some columns again, to the same bits; MNIST's
   196 tiles leave 4, one column at a time before: the forward op 4% slower), or single
   columns when T is shorter than a vector. */
template <int R>
static void c3_product_rows(const float *U, const float *V, npy_intp Ci, npy_intp T, float *M)
{
    npy_intp t = 0;
    for (; t + 3 * C3_VEC_FLOATS <= T; t += 3 * C3_VEC_FLOATS)
        c3_product_tile<R, 3>(U, V + t, Ci, T, M + t);
    for (; t + C3_VEC_FLOATS <= T; t += C3_VEC_FLOATS)
        c3_product_tile<R, 1>(U, V + t, Ci, T, M + t);
    if (t < T && T >= C3_VEC_FLOATS)
        c3_product_tile<R, 1>(U, V + T - C3_VEC_FLOATS, Ci, T, M + T - C3_VEC_FLOATS);
    else
        for (; t < T; t++)
            c3_product_column<R>(U, V + t, Ci, T, M + t);
}

/* M (Co, T) = U (Co, Ci) V (Ci, T): four rows at a time, then one. */
static void c3_product(const float *U, const float *V, npy_intp Co, npy_intp Ci, npy_intp T, float *M)
{
    npy_intp co = 0;
    for (; co + 4 <= Co; co += 4)
        c3_product_rows<4>(U + co * Ci, V, Ci, T, M + co * T);
    for (; co < Co; co++)
        c3_product_rows<1>(U + co * Ci, V, Ci, T, M + co * T);
}

/* dU[p] (Co, Ci) += dM[p] (Co, T) V[p]^T (T, Ci), the weight gradient's products, by the
   loops below on AVX2 when both channel counts are at most C3_OWN_PRODUCT_MAX_CIN and there
   are at least C3_OWN_GRAD_MIN_TILES tiles: 2 x 4 sums over the tiles in vector lanes, then
   across the lanes. OpenBLAS's Haswell sgemm_ copied both operands into its packed layouts
   before each product, as long as 3/4 of its multiplying (MNIST's 20 channels, 196 tiles):
   4 x 3 sums in registers took 1.05x sgemm_'s time there, 2 x 4 0.87x; at 64 tiles (dead
   leaves' 16x16 scale) 1.3x, and with AVX-512 (sgemm_'s SkylakeX kernel) 1.5x. */
#ifdef __AVX512F__
#define C3_OWN_GRAD_MIN_TILES NPY_MAX_INTP
#else
#define C3_OWN_GRAD_MIN_TILES 128
#endif
#ifdef __AVX512F__
typedef int c3_ivec __attribute__((vector_size(64), aligned(4), may_alias));
#else
typedef int c3_ivec __attribute__((vector_size(32), aligned(4), may_alias));
#endif

/* The lanes of a vector from lane `first` on (the others zero). */
static inline c3_ivec c3_lanes_from(npy_intp first)
{
    c3_ivec keep;
    for (int i = 0; i < C3_VEC_FLOATS; i++)
        keep[i] = i >= first ? -1 : 0;
    return keep;
}

/* acc[r][q] += dM[r] V[q] over the vector of tiles from `at`, the lanes not in `keep` zero. */
template <int R, int Q>
static inline void c3_grad_product_step(c3_vec (&acc)[R][Q], const float *dM, const float *V,
                                        npy_intp T, npy_intp at, c3_ivec keep)
{
    c3_vec v[Q];
    int r, q;
    for (q = 0; q < Q; q++)
        v[q] = (c3_vec)(*(const c3_ivec *)(V + q * T + at) & keep);
    for (r = 0; r < R; r++) {
        const c3_vec d = *(const c3_vec *)(dM + r * T + at);
        for (q = 0; q < Q; q++)
            acc[r][q] += d * v[q];
    }
}

/* R rows of dM against Q rows of V, over all T tiles: R Q sums in registers. The last
   vector ends at tile T, its lanes of tiles already summed masked out. */
template <int R, int Q>
static inline void c3_grad_product_tile(const float *dM, const float *V, npy_intp T, npy_intp Ci,
                                        float *dU)
{
    const c3_ivec all = c3_lanes_from(0);
    c3_vec acc[R][Q] = {};
    npy_intp t = 0;
    int r, q;
    for (; t + C3_VEC_FLOATS <= T; t += C3_VEC_FLOATS)
        c3_grad_product_step<R, Q>(acc, dM, V, T, t, all);
    if (t < T)
        c3_grad_product_step<R, Q>(acc, dM, V, T, T - C3_VEC_FLOATS, c3_lanes_from(t - (T - C3_VEC_FLOATS)));
    for (r = 0; r < R; r++)
        for (q = 0; q < Q; q++) {
            float s = 0.f;
            for (int i = 0; i < C3_VEC_FLOATS; i++)
                s += acc[r][q][i];
            dU[r * Ci + q] += s;
        }
}

/* R rows of dU, all Ci columns: four at a time, then one. */
template <int R>
static void c3_grad_product_rows(const float *dM, const float *V, npy_intp T, npy_intp Ci, float *dU)
{
    npy_intp ci = 0;
    for (; ci + 4 <= Ci; ci += 4)
        c3_grad_product_tile<R, 4>(dM, V + ci * T, T, Ci, dU + ci);
    for (; ci < Ci; ci++)
        c3_grad_product_tile<R, 1>(dM, V + ci * T, T, Ci, dU + ci);
}

/* dU (Co, Ci) += dM (Co, T) V (Ci, T)^T, T >= C3_VEC_FLOATS: two rows at a time, then one. */
static void c3_grad_product(const float *dM, const float *V, npy_intp Co, npy_intp Ci, npy_intp T,
                            float *dU)
{
    npy_intp co = 0;
    for (; co + 2 <= Co; co += 2)
        c3_grad_product_rows<2>(dM + co * T, V, T, Ci, dU + co * Ci);
    for (; co < Co; co++)
        c3_grad_product_rows<1>(dM + co * T, V, T, Ci, dU + co * Ci);
}

/* ------------------------------------------------------------------ Winograd drivers */

/* Images per block: blocks of at most `workspace` floats of V and M, at least one block per
   thread; *n_blocks the number of blocks. */
static npy_intp c3_winograd_block(npy_intp n, npy_intp Ci, npy_intp Co, npy_intp tiles,
                                  npy_intp workspace, int threads, npy_intp *n_blocks)
{
    const npy_intp nb = c3_share(n, c3_block(n, 16 * (Ci + Co) * tiles, workspace), threads);
    *n_blocks = (n + nb - 1) / nb;
    return nb;
}

/* y = f(corr(x, g) + b) for one block of m images: V = B^T d B, M[p] = U[p] V[p], then
   A^T m A plus bias and activation. V and M: this thread's buffers. */
static int c3_winograd_forward_block(const float *x, const float *U, const float *b,
                                     npy_intp m, npy_intp Ci, npy_intp H, npy_intp W, npy_intp Co,
                                     int act, float slope, float *V, float *M, float *y)
{
    const npy_intp T = m * ((H + 1) / 2) * ((W + 1) / 2);
    int p;
    if (c3_input_transform(x, m, Ci, H, W, V))
        return -1;
    for (p = 0; p < 16; p++) {  /* M[p] (Co, T) = U[p] (Co, Ci) V[p] (Ci, T) */
        const float *Up = U + p * Co * Ci, *Vp = V + p * c3_plane(Ci, T);
        float *Mp = M + p * c3_plane(Co, T);
        if (Ci <= C3_OWN_PRODUCT_MAX_CIN)
            c3_product(Up, Vp, Co, Ci, T, Mp);
        else
            c3_sgemm('N', 'N', T, Co, Ci, Vp, T, Up, Ci, 0.f, Mp, T);
    }
    return c3_output_transform(M, m, Co, H, W, b, act, slope, y);
}

/* y = f(corr(x, g) + b) by Winograd F(2x2, 3x3), blocked over images, the blocks shared out
   between the threads. */
static int c3_winograd_forward(const float *x, const float *g, const float *b,
                               npy_intp n, npy_intp Ci, npy_intp H, npy_intp W, npy_intp Co,
                               int act, float slope, npy_intp workspace, float *y)
{
    const npy_intp tiles = ((H + 1) / 2) * ((W + 1) / 2);
    const int threads = c3_threads();
    npy_intp n_blocks;
    const npy_intp nb = c3_winograd_block(n, Ci, Co, tiles, workspace, threads, &n_blocks);
    const npy_intp v_size = 16 * c3_plane(Ci, nb * tiles), m_size = 16 * c3_plane(Co, nb * tiles);
    float *U = (float *)malloc(16 * Co * Ci * sizeof(float));  /* U (16, Co, Ci) */
    int failed = !U, blas_before = 0;
    if (failed)
        goto done;
    c3_filter_transform(g, Co * Ci, U);
    blas_before = c3_blas_threads(threads, 1);
    #pragma omp parallel num_threads(threads)
    {
        float *V = (float *)malloc((v_size + m_size) * sizeof(float));  /* V (16, Ci, T), M (16, Co, T) */
        int err = !V;
        npy_intp k;
        #pragma omp for schedule(static)
        for (k = 0; k < n_blocks; k++) {
            const npy_intp i0 = k * nb, m = n - i0 < nb ? n - i0 : nb;
            if (!err)
                err = c3_winograd_forward_block(x + i0 * Ci * H * W, U, b, m, Ci, H, W, Co, act, slope,
                                                V, V + v_size, y + i0 * Co * H * W);
        }
        free(V);
        c3_flag(&failed, err);
    }
    if (blas_before)
        c3_blas_threads(threads, blas_before);
done:
    free(U);
    if (failed)
        PyErr_NoMemory();
    return failed ? -1 : 0;
}

/* dU[p] += dM[p] V[p]^T for one block of m images (dM = A dY A^T, V = B^T d B). V and dM:
   this thread's buffers; dU (16, Co, Ci) this thread's sum. */
static int c3_winograd_grad_weights_block(const float *x, const float *dy, npy_intp m, npy_intp Ci,
                                          npy_intp H, npy_intp W, npy_intp Co, float *V, float *dM,
                                          float *dU)
{
    const npy_intp T = m * ((H + 1) / 2) * ((W + 1) / 2);
    int p;
    if (c3_input_transform(x, m, Ci, H, W, V) || c3_gradient_transform(dy, m, Co, H, W, dM))
        return -1;
    for (p = 0; p < 16; p++) {  /* dU[p] (Co, Ci) += dM[p] (Co, T) V[p]^T (T, Ci) */
        const float *Vp = V + p * c3_plane(Ci, T), *dMp = dM + p * c3_plane(Co, T);
        if (Ci <= C3_OWN_PRODUCT_MAX_CIN && Co <= C3_OWN_PRODUCT_MAX_CIN && T >= C3_OWN_GRAD_MIN_TILES)
            c3_grad_product(dMp, Vp, Co, Ci, T, dU + p * Co * Ci);
        else
            c3_sgemm('T', 'N', Ci, Co, T, Vp, T, dMp, T, 1.f, dU + p * Co * Ci, Ci);
    }
    return 0;
}

/* dg = d(sum dy * corr(x, g)) / dg by Winograd: dU[p] = sum_tiles dM[p] V[p]^T, dg = G^T dU G.
   Each thread sums its blocks (consecutive ones) in order; the threads' sums are added in
   thread order. */
static int c3_winograd_grad_weights(const float *x, const float *dy,
                                    npy_intp n, npy_intp Ci, npy_intp H, npy_intp W, npy_intp Co,
                                    npy_intp workspace, float *dg)
{
    const npy_intp tiles = ((H + 1) / 2) * ((W + 1) / 2), u_size = 16 * Co * Ci;
    const int threads = c3_threads();
    npy_intp n_blocks;
    const npy_intp nb = c3_winograd_block(n, Ci, Co, tiles, workspace, threads, &n_blocks);
    const npy_intp v_size = 16 * c3_plane(Ci, nb * tiles), m_size = 16 * c3_plane(Co, nb * tiles);
    float *dU = (float *)malloc(u_size * sizeof(float));  /* the threads' sum */
    float **parts = (float **)calloc(threads, sizeof(float *));  /* each thread's sum */
    int failed = !dU || !parts, blas_before = 0;
    if (failed)
        goto done;
    blas_before = c3_blas_threads(threads, 1);
    #pragma omp parallel num_threads(threads)
    {
        const int t = c3_thread();
        float *V = (float *)malloc((v_size + m_size + u_size) * sizeof(float));  /* V, dM, dU */
        int err = !V;
        npy_intp k, j;
        if (V) {
            parts[t] = V + v_size + m_size;
            memset(parts[t], 0, u_size * sizeof(float));
        }
        #pragma omp for schedule(static)
        for (k = 0; k < n_blocks; k++) {
            const npy_intp i0 = k * nb, m = n - i0 < nb ? n - i0 : nb;
            if (!err)
                err = c3_winograd_grad_weights_block(x + i0 * Ci * H * W, dy + i0 * Co * H * W, m, Ci,
                                                     H, W, Co, V, V + v_size, parts[t]);
        }
        c3_flag(&failed, err);
        #pragma omp barrier
        if (!failed) {
            #pragma omp for schedule(static)
            for (j = 0; j < u_size; j++) {
                float s = parts[0][j];
                int q;
                for (q = 1; q < threads; q++)
                    s += parts[q][j];
                dU[j] = s;
            }
        }
        free(V);
    }
    if (blas_before)
        c3_blas_threads(threads, blas_before);
    if (!failed)
        c3_filter_transform_grad(dU, Co * Ci, dg);
done:
    free(dU);
    free(parts);
    if (failed)
        PyErr_NoMemory();
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ im2col */

/* The 9 shifted copies of one zero-padded channel xc (H, W): col[k * rstride + h W + w] =
   xc[h + ky - 1, w + kx - 1] for k = 3 ky + kx. */
static void c3_im2col_channel(const float *xc, npy_intp H, npy_intp W, float *col, npy_intp rstride)
{
    npy_intp h;
    int ky, kx;
    for (ky = 0; ky < 3; ky++)
        for (kx = 0; kx < 3; kx++) {
            float *dst = col + (3 * ky + kx) * rstride;
            for (h = 0; h < H; h++) {
                const npy_intp hs = h + ky - 1;
                float *d = dst + h * W;
                const float *s = xc + hs * W;
                if (hs < 0 || hs >= H) {
                    memset(d, 0, W * sizeof(float));
                } else if (kx == 0) {
                    d[0] = 0.f;
                    memcpy(d + 1, s, (W - 1) * sizeof(float));
                } else if (kx == 1) {
                    memcpy(d, s, W * sizeof(float));
                } else {
                    memcpy(d, s + 1, (W - 1) * sizeof(float));
                    d[W - 1] = 0.f;
                }
            }
        }
}

/* col (9 C, nb H W): the im2col matrix of nb images x (nb, C, H, W). Work-sharing loop. */
static void c3_im2col(const float *x, npy_intp nb, npy_intp C, npy_intp H, npy_intp W, float *col)
{
    const npy_intp HW = H * W, rstride = nb * HW;
    npy_intp ic;
    #pragma omp for schedule(static) nowait
    for (ic = 0; ic < nb * C; ic++) {
        const npy_intp i = ic / C, c = ic % C;
        c3_im2col_channel(x + ic * HW, H, W, col + 9 * c * rstride + i * HW, rstride);
    }
}

/* y (nb, Co, H, W) = f(out (Co, nb H W) + b). Work-sharing loop. */
static void c3_scatter(const float *out, npy_intp nb, npy_intp Co, npy_intp HW,
                       const float *b, int act, float slope, float *y)
{
    npy_intp ic;
    #pragma omp for schedule(static) nowait
    for (ic = 0; ic < nb * Co; ic++) {
        const npy_intp i = ic / Co, co = ic % Co;
        c3_bias_activate(y + ic * HW, out + co * nb * HW + i * HW, HW, b ? b[co] : 0.f, act, slope);
    }
}

/* dyb (Co, nb H W) = dy (nb, Co, H, W) with the image axis moved in. Work-sharing loop. */
static void c3_gather(const float *dy, npy_intp nb, npy_intp Co, npy_intp HW, float *dyb)
{
    npy_intp ic;
    #pragma omp for schedule(static) nowait
    for (ic = 0; ic < nb * Co; ic++) {
        const npy_intp i = ic / Co, co = ic % Co;
        memcpy(dyb + co * nb * HW + i * HW, dy + ic * HW, HW * sizeof(float));
    }
}

/* y = f(corr(x, g) + b) by im2col: one sgemm (Co, 9 Ci) (9 Ci, nb H W) per block of images;
   block k's im2col and block k-1's scatter share one parallel region. */
static int c3_im2col_forward(const float *x, const float *g, const float *b,
                             npy_intp n, npy_intp Ci, npy_intp H, npy_intp W, npy_intp Co,
                             int act, float slope, npy_intp workspace, float *y)
{
    const npy_intp HW = H * W, K = 9 * Ci, nb = c3_block(n, (K + Co) * HW, workspace);
    float *col = (float *)malloc((K + Co) * nb * HW * sizeof(float));  /* one block */
    float *out = col + K * nb * HW;  /* col (9 Ci, nb HW), out (Co, nb HW) */
    npy_intp i0;
    if (!col) {
        PyErr_NoMemory();
        return -1;
    }
    for (i0 = 0; i0 < n + nb; i0 += nb) {  /* i0: block in; i0 - nb: block out */
        const npy_intp m_in = i0 < n ? (n - i0 < nb ? n - i0 : nb) : 0, N = m_in * HW;
        const npy_intp m_out = i0 > 0 ? (n - (i0 - nb) < nb ? n - (i0 - nb) : nb) : 0;
        #pragma omp parallel
        {
            if (m_in)
                c3_im2col(x + i0 * Ci * HW, m_in, Ci, H, W, col);
            if (m_out)
                c3_scatter(out, m_out, Co, HW, b, act, slope, y + (i0 - nb) * Co * HW);
        }
        if (!m_in)
            break;
        c3_sgemm('N', 'N', N, Co, K, col, N, g, K, 0.f, out, N);  /* out = g (Co, 9 Ci) col */
    }
    free(col);
    return 0;
}

/* dg (Co, 9 Ci) = sum over blocks of dy (Co, nb H W) col^T (nb H W, 9 Ci). */
static int c3_im2col_grad_weights(const float *x, const float *dy,
                                  npy_intp n, npy_intp Ci, npy_intp H, npy_intp W, npy_intp Co,
                                  npy_intp workspace, float *dg)
{
    const npy_intp HW = H * W, K = 9 * Ci, nb = c3_block(n, (K + Co) * HW, workspace);
    float *col = (float *)malloc((K + Co) * nb * HW * sizeof(float));  /* one block */
    float *dyb = col + K * nb * HW;  /* col (9 Ci, nb HW), dyb (Co, nb HW) */
    npy_intp i0;
    if (!col) {
        PyErr_NoMemory();
        return -1;
    }
    memset(dg, 0, Co * K * sizeof(float));
    for (i0 = 0; i0 < n; i0 += nb) {
        const npy_intp m = n - i0 < nb ? n - i0 : nb, N = m * HW;
        #pragma omp parallel
        {
            c3_im2col(x + i0 * Ci * HW, m, Ci, H, W, col);
            c3_gather(dy + i0 * Co * HW, m, Co, HW, dyb);
        }
        c3_sgemm('T', 'N', K, Co, N, col, N, dyb, N, 1.f, dg, K);
    }
    free(col);
    return 0;
}

/* ------------------------------------------------------------------ Python-facing entry points */

/* impl 'auto': Winograd unless the layer has fewer than C3_AUTO_MIN_WINOGRAD_CIN input channels. */
static int c3_resolve_impl(int impl, npy_intp Ci)
{
    if (impl != C3_AUTO)
        return impl;
    return Ci < C3_AUTO_MIN_WINOGRAD_CIN ? C3_IM2COL : C3_WINOGRAD;
}

/* 0 if x (n, Ci, H, W) and g (Co, Ci, 3, 3) fit together and are not empty, else -1 with
   a ValueError naming both shapes. */
static int c3_check_shapes(const char *who, PyArrayObject *x, PyArrayObject *g)
{
    const npy_intp *xs = PyArray_DIMS(x), *gs = PyArray_DIMS(g);
    const char *problem = NULL;
    if (gs[2] != 3 || gs[3] != 3)
        problem = "the kernel must be 3x3";
    else if (xs[1] != gs[1])
        problem = "x's channels (axis 1) must equal W's input channels (axis 1)";
    else if (xs[1] < 1 || gs[0] < 1 || xs[2] < 1 || xs[3] < 1)
        problem = "channels, height and width must be at least 1";
    if (!problem)
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s: %s; got x of shape (%ld, %ld, %ld, %ld) and W of shape (%ld, %ld, %ld, %ld)",
                 who, problem, (long)xs[0], (long)xs[1], (long)xs[2], (long)xs[3],
                 (long)gs[0], (long)gs[1], (long)gs[2], (long)gs[3]);
    return -1;
}

/* Make *out a C-contiguous float32 array of shape dims (4 axes), reusing it if it fits. */
static int c3_prepare_output(PyArrayObject **out, const npy_intp *dims)
{
    if (*out && PyArray_NDIM(*out) == 4 && PyArray_IS_C_CONTIGUOUS(*out)
            && PyArray_TYPE(*out) == NPY_FLOAT32
            && PyArray_DIMS(*out)[0] == dims[0] && PyArray_DIMS(*out)[1] == dims[1]
            && PyArray_DIMS(*out)[2] == dims[2] && PyArray_DIMS(*out)[3] == dims[3])
        return 0;
    Py_XDECREF(*out);
    *out = (PyArrayObject *)PyArray_EMPTY(4, (npy_intp *)dims, NPY_FLOAT32, 0);
    if (*out)
        return 0;
    PyErr_Format(PyExc_MemoryError, "conv3x3: cannot allocate an output of shape (%ld, %ld, %ld, %ld)",
                 (long)dims[0], (long)dims[1], (long)dims[2], (long)dims[3]);
    return -1;
}

/* *y = f(corr(x, g) + b): x (n, Ci, H, W), g (Co, Ci, 3, 3), b (Co,) or NULL -> y (n, Co, H, W).
   workspace: floats of transformed buffers per block of images. */
static int c3_forward(PyArrayObject *x_in, PyArrayObject *g_in, PyArrayObject *b_in,
                      PyArrayObject **y, int impl, int act, float slope, npy_intp workspace)
{
    PyArrayObject *x = PyArray_GETCONTIGUOUS(x_in), *g = PyArray_GETCONTIGUOUS(g_in);
    PyArrayObject *b = b_in ? PyArray_GETCONTIGUOUS(b_in) : NULL;
    npy_intp dims[4];
    const float *xd, *gd, *bd;
    int err = -1;
    if (!x || !g || (b_in && !b) || c3_check_shapes("conv3x3", x, g))
        goto done;
    if (b && PyArray_DIMS(b)[0] != PyArray_DIMS(g)[0]) {
        PyErr_Format(PyExc_ValueError, "conv3x3: b has %ld entries but W has %ld output channels",
                     (long)PyArray_DIMS(b)[0], (long)PyArray_DIMS(g)[0]);
        goto done;
    }
    dims[0] = PyArray_DIMS(x)[0];
    dims[1] = PyArray_DIMS(g)[0];
    dims[2] = PyArray_DIMS(x)[2];
    dims[3] = PyArray_DIMS(x)[3];
    if (c3_prepare_output(y, dims))
        goto done;
    xd = (const float *)PyArray_DATA(x);
    gd = (const float *)PyArray_DATA(g);
    bd = b ? (const float *)PyArray_DATA(b) : NULL;
    if (c3_resolve_impl(impl, PyArray_DIMS(x)[1]) == C3_IM2COL)
        err = c3_im2col_forward(xd, gd, bd, dims[0], PyArray_DIMS(x)[1], dims[2], dims[3], dims[1],
                                act, slope, workspace, (float *)PyArray_DATA(*y));
    else
        err = c3_winograd_forward(xd, gd, bd, dims[0], PyArray_DIMS(x)[1], dims[2], dims[3], dims[1],
                                  act, slope, workspace, (float *)PyArray_DATA(*y));
done:
    Py_XDECREF(x);
    Py_XDECREF(g);
    Py_XDECREF(b);
    return err;
}

/* *dg = d(sum dy * corr(x, g)) / dg: x (n, Ci, H, W), dy (n, Co, H, W) -> dg (Co, Ci, 3, 3). */
static int c3_grad_weights(PyArrayObject *x_in, PyArrayObject *dy_in, PyArrayObject **dg,
                           int impl, npy_intp workspace)
{
    PyArrayObject *x = PyArray_GETCONTIGUOUS(x_in), *dy = PyArray_GETCONTIGUOUS(dy_in);
    npy_intp dims[4];
    const npy_intp *xs, *ys;
    const float *xd, *yd;
    int err = -1;
    if (!x || !dy)
        goto done;
    xs = PyArray_DIMS(x);
    ys = PyArray_DIMS(dy);
    if (ys[0] != xs[0] || ys[2] != xs[2] || ys[3] != xs[3] || xs[1] < 1 || ys[1] < 1
            || xs[2] < 1 || xs[3] < 1) {
        PyErr_Format(PyExc_ValueError,
                     "conv3x3 weight gradient: x (n, C_in, H, W) and dy (n, C_out, H, W) must agree "
                     "in n, H, W and not be empty; got x of shape (%ld, %ld, %ld, %ld) and dy of "
                     "shape (%ld, %ld, %ld, %ld)",
                     (long)xs[0], (long)xs[1], (long)xs[2], (long)xs[3],
                     (long)ys[0], (long)ys[1], (long)ys[2], (long)ys[3]);
        goto done;
    }
    dims[0] = ys[1];
    dims[1] = xs[1];
    dims[2] = dims[3] = 3;
    if (c3_prepare_output(dg, dims))
        goto done;
    xd = (const float *)PyArray_DATA(x);
    yd = (const float *)PyArray_DATA(dy);
    if (c3_resolve_impl(impl, xs[1]) == C3_IM2COL)
        err = c3_im2col_grad_weights(xd, yd, xs[0], xs[1], xs[2], xs[3], ys[1], workspace,
                                     (float *)PyArray_DATA(*dg));
    else
        err = c3_winograd_grad_weights(xd, yd, xs[0], xs[1], xs[2], xs[3], ys[1], workspace,
                                       (float *)PyArray_DATA(*dg));
done:
    Py_XDECREF(x);
    Py_XDECREF(dy);
    return err;
}
