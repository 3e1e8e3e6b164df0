/* C support code of multiscale.py, pasted into the module Theano compiles for each op
   (compiled as C++ by g++).

   Element-wise work of the multi-scale convolutional network on float32, in one pass
   over memory each:
   - ms_pyramid: mean pooling by 2, 4, ..., each level from the previous one;
   - ms_upsample_sum: f(sum_k w_k up_{2^k}(part_k) + b), nearest-neighbour upsampling; b one
     bias per channel or (untied) one per channel and output pixel;
   - ms_upsample_sum_grad: from y = f(pre) and g = dcost/dy, the block sums of
     w_k f'(pre) g for every part and the sum of f'(pre) g per channel (or per channel and
     pixel, over the images);
   - ms_bias_activation(_grad): f(x + b) on rows of x (N, F), and its gradients.
   Images are planes (n, C) of H x W pixels; OpenMP threads share out the planes (or rows).

   The activations use float32 exp / expm1 / log1p of our own below, written so that
   GCC vectorises the loops that call them (no library calls, no branches); a NaN in
   gives a NaN out, +-inf give the limits. */

#ifdef _OPENMP
#include <omp.h>  /* omp_get_max_threads: the slices of ms_pixel_bias_grad_run */
#endif

enum { MS_LINEAR = 0, MS_SOFTPLUS = 1, MS_TANH = 2, MS_LEAKY_RELU = 3 };

/* MS_LEAKY_SLOPE, the leaky ReLU's slope (released code), is defined by multiscale.py
   from conv3x3.LEAKY_RELU_SLOPE, its one definition. */

/* ------------------------------------------------------------------ float32 math */

/* Cody-Waite split of ln 2: MS_LN2_HI has 9 significant bits, so n * MS_LN2_HI is exact
   for |n| < 2^15 and r = x - n ln 2 loses nothing to cancellation. */
#define MS_LOG2E 1.44269504089f
#define MS_LN2_HI 0.693359375f
#define MS_LN2_LO -2.12194440e-4f
/* 1.5 * 2^23: adding it rounds a float of magnitude below 2^22 to an integer, which then
   sits in the low bits of the sum's representation. */
#define MS_ROUND_MAGIC 12582912.0f

static inline float ms_from_bits(int32_t i)
{
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

static inline int32_t ms_to_bits(float f)
{
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

/* 2^k as a float for an integer -126 <= k <= 127. */
static inline float ms_pow2(int32_t k)
{
    return ms_from_bits((k + 127) << 23);
}

/* x = n ln 2 + r with n an integer and |r| <= ln 2 / 2 (x already clamped to a few hundred):
   returns expm1(r) and sets *n. expm1(r) = r + r^2 P(r), P a degree-5 minimax fit of
   (e^r - 1 - r) / r^2 on [-ln 2 / 2, ln 2 / 2] (ours: relative error 2.4e-10). */
static inline float ms_expm1_reduced(float x, int32_t *n)
{
    float t = x * MS_LOG2E + MS_ROUND_MAGIC;
    float nf = t - MS_ROUND_MAGIC;
    float r = (x - nf * MS_LN2_HI) - nf * MS_LN2_LO;
    float p = 1.98459995e-4f;
    p = p * r + 1.39406219e-3f;
    p = p * r + 8.33338872e-3f;
    p = p * r + 4.16663624e-2f;
    p = p * r + 1.66666657e-1f;
    p = p * r + 0.5f;
    *n = ms_to_bits(t) - ms_to_bits(MS_ROUND_MAGIC);
    return r + r * r * p;
}

/* e^x. Computed at x clamped to [-104, 100] (below -104 e^x rounds to 0, above 88.73 it
   overflows to inf), a NaN x returned as it is. 2^n is applied as two factors
   2^(n/2) so that results in the subnormal range come out right. */
static inline float ms_exp(float x)
{
    int32_t n;
    float c = x > -104.f ? x : -104.f;
    c = c < 100.f ? c : 100.f;
    float em = ms_expm1_reduced(c, &n);
    int32_t n1 = n >> 1;
    float e = (1.f + em) * ms_pow2(n1) * ms_pow2(n - n1);
    return x == x ? e : x;
}

/* e^x - 1, accurate near 0: 2^n (1 + em) - 1 written as 2 (h em + (h - 1/2)) with
   h = 2^(n-1), which is em itself when n = 0. Computed at x clamped to [-30, 88.8] (e^-30 - 1
   rounds to -1, 88.8 overflows to inf), a NaN x returned as it is. */
static inline float ms_expm1(float x)
{
    int32_t n;
    float c = x > -30.f ? x : -30.f;
    c = c < 88.8f ? c : 88.8f;
    float em = ms_expm1_reduced(c, &n);
    float h = ms_pow2(n - 1);
    float e = 2.f * (h * em + (h - 0.5f));
    return x == x ? e : x;
}

/* log(1 + t) for 0 <= t <= 1 (or NaN): 2 atanh(s) with s = t / (2 + t) <= 1/3,
   = 2 s + s^3 Q(s^2), Q a degree-4 minimax fit on [0, 1/9] (ours: relative error 1.1e-10). */
static inline float ms_log1p_unit(float t)
{
    float s = t / (2.f + t);
    float z = s * s;
    float q = 2.42895752e-1f;
    q = q * z + 2.14307353e-1f;
    q = q * z + 2.86165982e-1f;
    q = q * z + 3.99988890e-1f;
    q = q * z + 6.66666746e-1f;
    return 2.f * s + s * z * q;
}

/* log(1 + e^x) = max(x, 0) + log(1 + e^-|x|). */
static inline float ms_softplus(float x)
{
    float positive = x > 0.f ? x : 0.f;
    return positive + ms_log1p_unit(ms_exp(-fabsf(x)));
}

/* tanh x = -expm1(-2|x|) / (2 + expm1(-2|x|)) with the sign of x. */
static inline float ms_tanh(float x)
{
    float e = ms_expm1(-2.f * fabsf(x));
    return copysignf(-e / (2.f + e), x);
}

template <int ACT> static inline float ms_activate(float v)
{
    if (ACT == MS_SOFTPLUS) return ms_softplus(v);
    if (ACT == MS_TANH) return ms_tanh(v);
    if (ACT == MS_LEAKY_RELU) return v > 0.f ? v : MS_LEAKY_SLOPE * v;
    return v;
}

/* f'(pre) from y = f(pre) alone: softplus sigmoid(pre) = 1 - e^-y; tanh 1 - y^2;
   leaky ReLU 1 where y > 0, else the slope (NaN for a NaN y). */
template <int ACT> static inline float ms_activation_slope(float y)
{
    if (ACT == MS_SOFTPLUS) return -ms_expm1(-y);
    if (ACT == MS_TANH) return (1.f - y) * (1.f + y);
    if (ACT == MS_LEAKY_RELU) return y > 0.f ? 1.f : (y == y ? MS_LEAKY_SLOPE : y);
    return 1.f;
}

/* ------------------------------------------------------------------ helpers */

/* An array of shape dims (nd axes, float32, C-contiguous) in *out: the one there if it
   fits, else a new one. */
static int ms_prepare_output(PyArrayObject **out, int nd, const npy_intp *dims)
{
    if (*out && PyArray_NDIM(*out) == nd && PyArray_TYPE(*out) == NPY_FLOAT32
            && PyArray_ISCARRAY(*out)) {
        int same = 1;
        for (int a = 0; a < nd; a++)
            same &= PyArray_DIMS(*out)[a] == dims[a];
        if (same)
            return 0;
    }
    Py_XDECREF(*out);
    *out = (PyArrayObject *)PyArray_EMPTY(nd, (npy_intp *)dims, NPY_FLOAT32, 0);
    return *out ? 0 : -1;
}

/* A C-contiguous float32 array of nd axes: a new reference (the input itself when it
   already is one), or NULL with a Python error naming `who` and `what`. */
static PyArrayObject *ms_contiguous(PyArrayObject *a, int nd, const char *who, const char *what)
{
    if (PyArray_NDIM(a) != nd || PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a float32 array of %d axes, got %d axes "
                     "of type number %d", who, what, nd, PyArray_NDIM(a), PyArray_TYPE(a));
        return NULL;
    }
    return PyArray_GETCONTIGUOUS(a);
}

static void ms_release(PyArrayObject **arrays, int count)
{
    for (int k = 0; k < count; k++)
        Py_XDECREF(arrays[k]);
}

/* Sets *failed from inside an OpenMP region. */
static void ms_flag(int *failed)
{
    #pragma omp atomic write
    *failed = 1;
}

/* ------------------------------------------------------------------ mean-pool pyramid */

/* out (H/2, W/2) = scale times the sums of the 2 x 2 blocks of in (H, W): first the pair
   sums down the columns into half (H/2, W), then those along the rows, one loop over the
   whole plane (W is even, so pairs never straddle two rows). */
static void ms_pool2(const float *in, npy_intp H, npy_intp W, float scale, float *half, float *out)
{
    for (npy_intp i = 0; i < H / 2; i++) {
        const float *a = in + 2 * i * W, *b = a + W;
        float *h = half + i * W;
        #pragma omp simd
        for (npy_intp j = 0; j < W; j++)
            h[j] = a[j] + b[j];
    }
    #pragma omp simd
    for (npy_intp m = 0; m < H * W / 4; m++)
        out[m] = scale * (half[2 * m] + half[2 * m + 1]);
}

/* levels[k - 1] = x mean-pooled by 2^k for k = 1 .. n_levels; x (n, C, H, W). */
static int ms_pyramid(PyArrayObject *x_in, int n_levels, PyArrayObject ***levels)
{
    const char *who = "mean_pool_pyramid";
    PyArrayObject *x = ms_contiguous(x_in, 4, who, "x");
    if (!x)
        return -1;
    const npy_intp *d = PyArray_DIMS(x);
    npy_intp planes = d[0] * d[1], H = d[2], W = d[3], side = (npy_intp)1 << n_levels;
    if (H % side || W % side) {
        PyErr_Format(PyExc_ValueError, "%s: the image sides (%ld x %ld) must be divisible by "
                     "2^(n_scales - 1) = %ld", who, (long)H, (long)W, (long)side);
        Py_DECREF(x);
        return -1;
    }
    float *out[32];
    for (int k = 1; k <= n_levels; k++) {
        npy_intp dims[4] = {d[0], d[1], H >> k, W >> k};
        if (ms_prepare_output(levels[k - 1], 4, dims)) {
            Py_DECREF(x);
            return -1;
        }
        out[k - 1] = (float *)PyArray_DATA(*levels[k - 1]);
    }
    const float *xd = (const float *)PyArray_DATA(x);
    int failed = 0;
    #pragma omp parallel
    {
        float *half = (float *)malloc(sizeof(float) * (H * W / 2 + 1));
        if (!half)
            ms_flag(&failed);
        #pragma omp for schedule(static)
        for (npy_intp p = 0; p < planes; p++) {
            const float *in = xd + p * H * W;
            for (int k = 1; k <= n_levels && half; k++) {
                npy_intp h = H >> (k - 1), w = W >> (k - 1);
                float *o = out[k - 1] + p * (h / 2) * (w / 2);
                ms_pool2(in, h, w, 0.25f, half, o);
                in = o;
            }
        }
        free(half);
    }
    Py_DECREF(x);
    if (failed) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ upsample and sum */

/* The sizes of an upsample-sum: n images of C channels of H x W pixels, the coarsest part
   upsampled by 2^max_shift. */
typedef struct {
    int max_shift;
    npy_intp n, C, H, W;
} ms_levels;

/* Fills L and checks that part k is (n, C, H >> shift[k], W >> shift[k]), with H and W those
   of part 0 times 2^shift[0] and divisible by 2^max_shift. */
static int ms_check_parts(const char *who, PyArrayObject **parts, int count, const int *shift,
                          ms_levels *L)
{
    const npy_intp *d0 = PyArray_DIMS(parts[0]);
    L->n = d0[0];
    L->C = d0[1];
    L->H = d0[2] << shift[0];
    L->W = d0[3] << shift[0];
    L->max_shift = 0;
    for (int k = 0; k < count; k++)
        L->max_shift = shift[k] > L->max_shift ? shift[k] : L->max_shift;
    npy_intp side = (npy_intp)1 << L->max_shift;
    if (L->H % side || L->W % side) {
        PyErr_Format(PyExc_ValueError, "%s: the output sides (%ld x %ld) must be divisible by "
                     "2^%d, the factor of the coarsest part", who, (long)L->H, (long)L->W,
                     L->max_shift);
        return -1;
    }
    for (int k = 0; k < count; k++) {
        const npy_intp *d = PyArray_DIMS(parts[k]);
        npy_intp h = L->H >> shift[k], w = L->W >> shift[k];
        if (d[0] != L->n || d[1] != L->C || d[2] != h || d[3] != w) {
            PyErr_Format(PyExc_ValueError, "%s: part %d has shape (%ld, %ld, %ld, %ld), but "
                         "the first part's shape (%ld, %ld, %ld, %ld) makes it (%ld, %ld, %ld, "
                         "%ld): n and C alike, the sides divided by %ld", who, k,
                         (long)d[0], (long)d[1], (long)d[2], (long)d[3], (long)d0[0],
                         (long)d0[1], (long)d0[2], (long)d0[3], (long)L->n, (long)L->C,
                         (long)h, (long)w, (long)1 << (shift[k] - shift[0]));
            return -1;
        }
    }
    return 0;
}

/* dup (h, 2 w) = each value of c (h, w) twice along its row: one loop over the plane. */
static void ms_widen(const float *c, npy_intp count, float *dup)
{
    #pragma omp simd
    for (npy_intp m = 0; m < count; m++)
        dup[2 * m] = dup[2 * m + 1] = c[m];
}

/* y (H, W) = f(w0 p0 + up_2(c1) + bias): p0 (H, W) or NULL, c1 (H/2, W/2) or NULL (not both);
   the bias is the scalar `bias`, or with UNTIED the plane bmap (H, W). dup: H W / 2 floats of
   scratch. With f linear and no bias: one level's partial sum. */
template <int ACT, bool UNTIED = false>
static void ms_output_plane(const float *p0, float w0, const float *c1, float bias,
                            const float *bmap, npy_intp H, npy_intp W, float *dup, float *y)
{
    if (!c1) {
        #pragma omp simd
        for (npy_intp m = 0; m < H * W; m++)
            y[m] = ms_activate<ACT>(w0 * p0[m] + (UNTIED ? bmap[m] : bias));
        return;
    }
    ms_widen(c1, H * W / 4, dup);
    for (npy_intp i = 0; i < H; i += 2) {
        const float *u = dup + (i / 2) * W;
        const float *b0 = UNTIED ? bmap + i * W : NULL, *b1 = UNTIED ? b0 + W : NULL;
        float *y0 = y + i * W, *y1 = y0 + W;
        if (p0) {
            const float *a0 = p0 + i * W, *a1 = a0 + W;
            #pragma omp simd
            for (npy_intp j = 0; j < W; j++) {
                y0[j] = ms_activate<ACT>((w0 * a0[j] + u[j]) + (UNTIED ? b0[j] : bias));
                y1[j] = ms_activate<ACT>((w0 * a1[j] + u[j]) + (UNTIED ? b1[j] : bias));
            }
        } else if (UNTIED) {
            #pragma omp simd
            for (npy_intp j = 0; j < W; j++) {
                y0[j] = ms_activate<ACT>(u[j] + b0[j]);
                y1[j] = ms_activate<ACT>(u[j] + b1[j]);
            }
        } else {
            #pragma omp simd
            for (npy_intp j = 0; j < W; j++)
                y0[j] = y1[j] = ms_activate<ACT>(u[j] + bias);
        }
    }
}

/* y (H, W) = f(sum_k wk[k] up_{2^k}(level[k]) + bias) for plane p, level[k] the part at shift
   k (NULL if none), the bias `bias` or (UNTIED) the plane bmap: the coarsest level first, each
   finer one adding the upsampled sum of those before it. work: H W floats of scratch. */
template <int ACT, bool UNTIED>
static void ms_upsample_plane(const ms_levels *L, const float *const *level, const float *wk,
                              npy_intp p, float bias, const float *bmap, float *work, float *y)
{
    npy_intp H = L->H, W = L->W;
    int K = L->max_shift;
    float *dup = work, *c = work + H * W / 2, *coarser = NULL;
    for (int k = K; k >= 1; k--) {
        npy_intp h = H >> k, w = W >> k;
        const float *src = level[k] ? level[k] + p * h * w : NULL;
        ms_output_plane<MS_LINEAR>(src, wk[k], coarser, 0.f, NULL, h, w, dup, c);
        coarser = c;
        c += h * w;
    }
    ms_output_plane<ACT, UNTIED>(level[0] ? level[0] + p * H * W : NULL, wk[0], coarser, bias, bmap,
                                 H, W, dup, y);
}

/* bias: (C,), or with UNTIED (C, H, W); or NULL. */
template <int ACT, bool UNTIED>
static int ms_upsample_run(const ms_levels *L, const float *const *level, const float *wk,
                           const float *bias, float *y)
{
    npy_intp planes = L->n * L->C, HW = L->H * L->W;
    int failed = 0;
    #pragma omp parallel
    {
        float *work = (float *)malloc(sizeof(float) * (HW + 1));
        if (!work)
            ms_flag(&failed);
        #pragma omp for schedule(static)
        for (npy_intp p = 0; p < planes; p++) {
            if (work)
                ms_upsample_plane<ACT, UNTIED>(L, level, wk, p, bias && !UNTIED ? bias[p % L->C] : 0.f,
                                               UNTIED ? bias + (p % L->C) * HW : NULL, work, y + p * HW);
        }
        free(work);
    }
    if (failed) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

template <int ACT>
static int ms_upsample_dispatch(const ms_levels *L, const float *const *level, const float *wk,
                                const float *bias, int untied, float *y)
{
    return untied ? ms_upsample_run<ACT, true>(L, level, wk, bias, y)
                  : ms_upsample_run<ACT, false>(L, level, wk, bias, y);
}

/* *y = f(sum_k weight[k] up_{2^shift[k]}(parts[k]) + bias) with bias (C,), (C, H, W) (untied:
   one per channel and output pixel) or NULL. */
static int ms_upsample_sum(PyArrayObject **parts_in, int count, const int *shift,
                           const float *weight, PyArrayObject *bias_in, int act, PyArrayObject **y)
{
    const char *who = "upsample_sum";
    PyArrayObject *a[33] = {NULL};  /* the parts, then the bias */
    int status = -1;
    for (int k = 0; k < count; k++)
        if (!(a[k] = ms_contiguous(parts_in[k], 4, who, "every part")))
            goto done;
    if (bias_in && !(a[count] = ms_contiguous(bias_in, PyArray_NDIM(bias_in) == 3 ? 3 : 1, who, "bias")))
        goto done;
    {
        ms_levels L;
        if (ms_check_parts(who, a, count, shift, &L))
            goto done;
        int untied = bias_in && PyArray_NDIM(a[count]) == 3;
        if (bias_in && PyArray_DIMS(a[count])[0] != L.C) {
            PyErr_Format(PyExc_ValueError, "%s: the bias has %ld values for %ld channels",
                         who, (long)PyArray_DIMS(a[count])[0], (long)L.C);
            goto done;
        }
        if (untied && (PyArray_DIMS(a[count])[1] != L.H || PyArray_DIMS(a[count])[2] != L.W)) {
            PyErr_Format(PyExc_ValueError, "%s: the untied bias is %ld x %ld per channel for an "
                         "output of %ld x %ld", who, (long)PyArray_DIMS(a[count])[1],
                         (long)PyArray_DIMS(a[count])[2], (long)L.H, (long)L.W);
            goto done;
        }
        npy_intp dims[4] = {L.n, L.C, L.H, L.W};
        if (ms_prepare_output(y, 4, dims))
            goto done;
        const float *level[32] = {NULL};
        float wk[32] = {0.f};
        for (int k = 0; k < count; k++) {
            level[shift[k]] = (const float *)PyArray_DATA(a[k]);
            wk[shift[k]] = weight[k];
        }
        const float *b = bias_in ? (const float *)PyArray_DATA(a[count]) : NULL;
        float *yd = (float *)PyArray_DATA(*y);
        switch (act) {
        case MS_SOFTPLUS: status = ms_upsample_dispatch<MS_SOFTPLUS>(&L, level, wk, b, untied, yd); break;
        case MS_TANH: status = ms_upsample_dispatch<MS_TANH>(&L, level, wk, b, untied, yd); break;
        case MS_LEAKY_RELU: status = ms_upsample_dispatch<MS_LEAKY_RELU>(&L, level, wk, b, untied, yd); break;
        default: status = ms_upsample_dispatch<MS_LINEAR>(&L, level, wk, b, untied, yd); break;
        }
    }
done:
    ms_release(a, count + 1);
    return status;
}

/* ------------------------------------------------------------------ its gradient */

/* Pixels per float32 partial sum of the bias gradient (then summed in float64). */
#define MS_SUM_CHUNK 1024

/* For one plane p: d = g f'(y) into d (H x W, or straight into grad[0] when there are no
   coarser parts), w_0 d into grad[0] (NULL: no part at shift 0), then level by level the
   sums of d over 2 x 2 blocks of the level before, w_k times them into grad[k]. work holds
   d and 3 H W / 4 floats more. Returns the sum of d. */
template <int ACT>
static double ms_upsample_grad_plane(const ms_levels *L, const float *y, const float *g,
                                     float *const *grad, const float *wk, float *work)
{
    npy_intp H = L->H, W = L->W, HW = H * W;
    int K = L->max_shift;
    float *d = K ? work : grad[0], *sums = work + HW, *half = sums + HW / 4;
    float w0 = wk[0], *o = grad[0];
    double total = 0.0;
    for (npy_intp start = 0; start < HW; start += MS_SUM_CHUNK) {
        npy_intp end = start + MS_SUM_CHUNK < HW ? start + MS_SUM_CHUNK : HW;
        float chunk = 0.f;
        if (K && o) {
            #pragma omp simd reduction(+:chunk)
            for (npy_intp m = start; m < end; m++) {
                float v = ACT == MS_LINEAR ? g[m] : g[m] * ms_activation_slope<ACT>(y[m]);
                d[m] = v;
                o[m] = w0 * v;
                chunk += v;
            }
        } else {
            float scale = K ? 1.f : w0;  /* d itself, or grad[0] */
            #pragma omp simd reduction(+:chunk)
            for (npy_intp m = start; m < end; m++) {
                float v = ACT == MS_LINEAR ? g[m] : g[m] * ms_activation_slope<ACT>(y[m]);
                d[m] = scale * v;
                chunk += v;
            }
        }
        total += chunk;
    }
    const float *finer = d;
    for (int k = 1; k <= K; k++) {
        npy_intp h = H >> (k - 1), w = W >> (k - 1);
        ms_pool2(finer, h, w, 1.f, half, sums);
        if (grad[k]) {
            float wgt = wk[k], *out = grad[k];
            #pragma omp simd
            for (npy_intp m = 0; m < h * w / 4; m++)
                out[m] = wgt * sums[m];
        }
        /* the next level reads these sums: move them out of the way of the next ones */
        float *tmp = d;
        d = sums;
        sums = tmp;
        finer = d;
    }
    return total;
}

template <int ACT>
static int ms_upsample_grad_run(const ms_levels *L, const float *y, const float *g,
                                float *const *grad, const float *wk, double *plane_sums)
{
    npy_intp planes = L->n * L->C, H = L->H, W = L->W;
    int K = L->max_shift, failed = 0;
    #pragma omp parallel
    {
        float *work = (float *)malloc(sizeof(float) * (2 * H * W + 1));
        if (!work)
            ms_flag(&failed);
        #pragma omp for schedule(static)
        for (npy_intp p = 0; p < planes; p++) {
            if (!work)
                continue;
            float *gp[32];
            for (int k = 0; k <= K; k++)
                gp[k] = grad[k] ? grad[k] + p * (H >> k) * (W >> k) : NULL;
            plane_sums[p] = ms_upsample_grad_plane<ACT>(L, y ? y + p * H * W : NULL,
                                                        g + p * H * W, gp, wk, work);
        }
        free(work);
    }
    if (failed) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* db (C, H W) = the sums over the n images of g f'(y) (n, C, H W), float64 per value of
   (C, H W), added in the images' order. Each thread takes one contiguous slice of the C H W
   values and reads it image after image: long runs through memory (a loop over the images
   of one channel at a time, reading H W floats every C H W, took 7x longer for MNIST's
   512 x 20 x 28 x 28 on one thread). The sums are the same whatever the number of threads.
   grad not NULL (a single part at shift 0): also grad = w0 g f'(y), in the same pass (a
   second pass over y and g took as long again). */
template <int ACT>
static int ms_pixel_bias_grad_run(const float *y, const float *g, npy_intp n, npy_intp C,
                                  npy_intp HW, float *grad, float w0, float *db)
{
    npy_intp size = C * HW;
    int slices = 1;
#ifdef _OPENMP
    slices = omp_get_max_threads();
#endif
    double *acc = (double *)malloc(sizeof(double) * (size + 1));
    if (!acc) {
        PyErr_NoMemory();
        return -1;
    }
    #pragma omp parallel for schedule(static)
    for (int s = 0; s < slices; s++) {
        npy_intp lo = size * s / slices, hi = size * (s + 1) / slices;
        for (npy_intp m = lo; m < hi; m++)
            acc[m] = 0.0;
        for (npy_intp i = 0; i < n; i++) {
            const float *gp = g + i * size, *yp = y ? y + i * size : NULL;
            float *op = grad ? grad + i * size : NULL;
            if (op) {
                #pragma omp simd
                for (npy_intp m = lo; m < hi; m++) {
                    float v = ACT == MS_LINEAR ? gp[m] : gp[m] * ms_activation_slope<ACT>(yp[m]);
                    op[m] = w0 * v;
                    acc[m] += v;
                }
            } else {
                #pragma omp simd
                for (npy_intp m = lo; m < hi; m++)
                    acc[m] += ACT == MS_LINEAR ? gp[m] : gp[m] * ms_activation_slope<ACT>(yp[m]);
            }
        }
        for (npy_intp m = lo; m < hi; m++)
            db[m] = (float)acc[m];
    }
    free(acc);
    return 0;
}

/* *dbias (C, H, W) = the sums over the images of g f'(y): the gradient of an untied bias;
   with grad (NULL or not) as ms_pixel_bias_grad_run. */
static int ms_pixel_bias_grad(const ms_levels *L, const float *y, const float *g, int act,
                              float *grad, float w0, PyArrayObject **dbias)
{
    npy_intp dims[3] = {L->C, L->H, L->W}, HW = L->H * L->W, n = L->n, C = L->C;
    if (ms_prepare_output(dbias, 3, dims))
        return -1;
    float *db = (float *)PyArray_DATA(*dbias);
    switch (act) {
    case MS_SOFTPLUS: return ms_pixel_bias_grad_run<MS_SOFTPLUS>(y, g, n, C, HW, grad, w0, db);
    case MS_TANH: return ms_pixel_bias_grad_run<MS_TANH>(y, g, n, C, HW, grad, w0, db);
    case MS_LEAKY_RELU: return ms_pixel_bias_grad_run<MS_LEAKY_RELU>(y, g, n, C, HW, grad, w0, db);
    default: return ms_pixel_bias_grad_run<MS_LINEAR>(y, g, n, C, HW, grad, w0, db);
    }
}

/* From y = f(pre) (NULL for no activation) and g = dcost/dy (n, C, H, W): grads[k] = the
   gradient of the part at shift[k], and when dbias is not NULL *dbias = the gradient of the
   bias: (C,) the sum over n, H, W of g f'(pre) (float32 sums over MS_SUM_CHUNK pixels of a
   plane, float64 beyond), or with untied (C, H, W) its sum over n. */
static int ms_upsample_sum_grad(PyArrayObject *y_in, PyArrayObject *g_in, int count,
                                const int *shift, const float *weight, int act,
                                PyArrayObject ***grads, PyArrayObject **dbias, int untied)
{
    const char *who = "upsample_sum gradient";
    PyArrayObject *g = NULL, *y = NULL;
    double *plane_sums = NULL;
    int status = -1;
    if (!(g = ms_contiguous(g_in, 4, who, "the output gradient")))
        goto done;
    if (y_in && !(y = ms_contiguous(y_in, 4, who, "the output")))
        goto done;
    {
        const npy_intp *d = PyArray_DIMS(g);
        int max_shift = 0;
        for (int k = 0; k < count; k++)
            max_shift = shift[k] > max_shift ? shift[k] : max_shift;
        npy_intp side = (npy_intp)1 << max_shift;
        if (d[2] % side || d[3] % side) {
            PyErr_Format(PyExc_ValueError, "%s: the image sides (%ld x %ld) must be divisible "
                         "by %ld", who, (long)d[2], (long)d[3], (long)side);
            goto done;
        }
        if (y && !PyArray_SAMESHAPE(y, g)) {
            PyErr_Format(PyExc_ValueError, "%s: the output and its gradient differ in shape",
                         who);
            goto done;
        }
        ms_levels L = {max_shift, d[0], d[1], d[2], d[3]};
        float *grad[32] = {NULL};
        float wk[32] = {0.f};
        for (int k = 0; k < count; k++) {
            npy_intp dims[4] = {d[0], d[1], d[2] >> shift[k], d[3] >> shift[k]};
            if (ms_prepare_output(grads[k], 4, dims))
                goto done;
            grad[shift[k]] = (float *)PyArray_DATA(*grads[k]);
            wk[shift[k]] = weight[k];
        }
        npy_intp planes = L.n * L.C;
        plane_sums = (double *)malloc(sizeof(double) * (planes + 1));
        if (!plane_sums) {
            PyErr_NoMemory();
            goto done;
        }
        const float *yd = y ? (const float *)PyArray_DATA(y) : NULL;
        const float *gd = (const float *)PyArray_DATA(g);
        if (untied && dbias && count == 1 && max_shift == 0) {  /* one pass for both */
            status = ms_pixel_bias_grad(&L, yd, gd, act, grad[0], wk[0], dbias);
            goto done;
        }
        switch (act) {
        case MS_SOFTPLUS: status = ms_upsample_grad_run<MS_SOFTPLUS>(&L, yd, gd, grad, wk, plane_sums); break;
        case MS_TANH: status = ms_upsample_grad_run<MS_TANH>(&L, yd, gd, grad, wk, plane_sums); break;
        case MS_LEAKY_RELU: status = ms_upsample_grad_run<MS_LEAKY_RELU>(&L, yd, gd, grad, wk, plane_sums); break;
        default: status = ms_upsample_grad_run<MS_LINEAR>(&L, yd, gd, grad, wk, plane_sums); break;
        }
        if (status || !dbias)
            goto done;
        if (untied) {
            status = ms_pixel_bias_grad(&L, yd, gd, act, NULL, 0.f, dbias);
            goto done;
        }
        npy_intp dims[1] = {L.C};
        if (ms_prepare_output(dbias, 1, dims)) {
            status = -1;
            goto done;
        }
        float *db = (float *)PyArray_DATA(*dbias);
        for (npy_intp c = 0; c < L.C; c++) {
            double s = 0.0;
            for (npy_intp i = 0; i < L.n; i++)
                s += plane_sums[i * L.C + c];
            db[c] = (float)s;
        }
    }
done:
    free(plane_sums);
    Py_XDECREF(g);
    Py_XDECREF(y);
    return status;
}

/* ------------------------------------------------------------------ bias and activation */

/* Rows of x per block of the bias gradient: float32 partial sums per block, then float64
   over the blocks in a fixed order, so the result does not depend on the number of threads. */
#define MS_ROWS_PER_BLOCK 64

template <int ACT>
static void ms_bias_activation_run(const float *x, const float *b, npy_intp N, npy_intp F, float *y)
{
    #pragma omp parallel for schedule(static)
    for (npy_intp i = 0; i < N; i++) {
        const float *xr = x + i * F;
        float *yr = y + i * F;
        #pragma omp simd
        for (npy_intp f = 0; f < F; f++)
            yr[f] = ms_activate<ACT>(xr[f] + b[f]);
    }
}

/* *y = f(x + b[None, :]) for x (N, F), b (F,). */
static int ms_bias_activation(PyArrayObject *x_in, PyArrayObject *b_in, int act, PyArrayObject **y)
{
    const char *who = "bias_activation";
    PyArrayObject *a[2] = {NULL, NULL};
    int status = -1;
    if (!(a[0] = ms_contiguous(x_in, 2, who, "x")) || !(a[1] = ms_contiguous(b_in, 1, who, "b")))
        goto done;
    {
        npy_intp N = PyArray_DIMS(a[0])[0], F = PyArray_DIMS(a[0])[1];
        if (PyArray_DIMS(a[1])[0] != F) {
            PyErr_Format(PyExc_ValueError, "%s: b has %ld values for x of %ld columns", who,
                         (long)PyArray_DIMS(a[1])[0], (long)F);
            goto done;
        }
        if (ms_prepare_output(y, 2, PyArray_DIMS(a[0])))
            goto done;
        const float *x = (const float *)PyArray_DATA(a[0]), *b = (const float *)PyArray_DATA(a[1]);
        float *yd = (float *)PyArray_DATA(*y);
        switch (act) {
        case MS_SOFTPLUS: ms_bias_activation_run<MS_SOFTPLUS>(x, b, N, F, yd); break;
        case MS_TANH: ms_bias_activation_run<MS_TANH>(x, b, N, F, yd); break;
        case MS_LEAKY_RELU: ms_bias_activation_run<MS_LEAKY_RELU>(x, b, N, F, yd); break;
        default: ms_bias_activation_run<MS_LINEAR>(x, b, N, F, yd); break;
        }
        status = 0;
    }
done:
    ms_release(a, 2);
    return status;
}

/* dx = g f'(y); block_sums[blk * F + f] = the float32 sum of dx[:, f] over block blk's rows. */
template <int ACT>
static void ms_bias_activation_grad_run(const float *y, const float *g, npy_intp N, npy_intp F,
                                        float *dx, float *block_sums)
{
    npy_intp blocks = (N + MS_ROWS_PER_BLOCK - 1) / MS_ROWS_PER_BLOCK;
    #pragma omp parallel for schedule(static)
    for (npy_intp blk = 0; blk < blocks; blk++) {
        float *s = block_sums + blk * F;
        npy_intp end = (blk + 1) * MS_ROWS_PER_BLOCK < N ? (blk + 1) * MS_ROWS_PER_BLOCK : N;
        for (npy_intp f = 0; f < F; f++)
            s[f] = 0.f;
        for (npy_intp i = blk * MS_ROWS_PER_BLOCK; i < end; i++) {
            const float *yr = y + i * F, *gr = g + i * F;
            float *dr = dx + i * F;
            #pragma omp simd
            for (npy_intp f = 0; f < F; f++) {
                float v = gr[f] * ms_activation_slope<ACT>(yr[f]);
                dr[f] = v;
                s[f] += v;
            }
        }
    }
}

/* From y = f(x + b) (N, F) and g = dcost/dy: *dx = g f'(x + b) and *db (F,) its column sums
   (float32 over blocks of MS_ROWS_PER_BLOCK rows, float64 beyond). */
static int ms_bias_activation_grad(PyArrayObject *y_in, PyArrayObject *g_in, int act,
                                   PyArrayObject **dx, PyArrayObject **db)
{
    const char *who = "bias_activation gradient";
    PyArrayObject *a[2] = {NULL, NULL};
    float *block_sums = NULL;
    int status = -1;
    if (!(a[0] = ms_contiguous(y_in, 2, who, "the output"))
            || !(a[1] = ms_contiguous(g_in, 2, who, "the output gradient")))
        goto done;
    {
        if (!PyArray_SAMESHAPE(a[0], a[1])) {
            PyErr_Format(PyExc_ValueError, "%s: the output and its gradient differ in shape",
                         who);
            goto done;
        }
        npy_intp N = PyArray_DIMS(a[0])[0], F = PyArray_DIMS(a[0])[1];
        npy_intp blocks = (N + MS_ROWS_PER_BLOCK - 1) / MS_ROWS_PER_BLOCK, dims[1] = {F};
        if (ms_prepare_output(dx, 2, PyArray_DIMS(a[0])) || ms_prepare_output(db, 1, dims))
            goto done;
        block_sums = (float *)malloc(sizeof(float) * (blocks * F + 1));
        if (!block_sums) {
            PyErr_NoMemory();
            goto done;
        }
        const float *y = (const float *)PyArray_DATA(a[0]), *g = (const float *)PyArray_DATA(a[1]);
        float *dxd = (float *)PyArray_DATA(*dx), *dbd = (float *)PyArray_DATA(*db);
        switch (act) {
        case MS_SOFTPLUS: ms_bias_activation_grad_run<MS_SOFTPLUS>(y, g, N, F, dxd, block_sums); break;
        case MS_TANH: ms_bias_activation_grad_run<MS_TANH>(y, g, N, F, dxd, block_sums); break;
        case MS_LEAKY_RELU: ms_bias_activation_grad_run<MS_LEAKY_RELU>(y, g, N, F, dxd, block_sums); break;
        default: ms_bias_activation_grad_run<MS_LINEAR>(y, g, N, F, dxd, block_sums); break;
        }
        for (npy_intp f = 0; f < F; f++) {
            double s = 0.0;
            for (npy_intp blk = 0; blk < blocks; blk++)
                s += block_sums[blk * F + f];
            dbd[f] = (float)s;
        }
        status = 0;
    }
done:
    free(block_sums);
    ms_release(a, 2);
    return status;
}
