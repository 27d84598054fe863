/* The Riccati recurrence of hope_attr.engine.jet.riccati_series, all orders of a block of
 * elements at once. Built at install time by setup.py as the optional extension module
 * hope_attr.engine._series_kernel and opened with ctypes by hope_attr/engine/native.py (its
 * docstring says why, and when the torch loops run instead). The module object itself is empty:
 * Python's import system only tells native.py where the file is.
 *
 * For g' = a + linear g + quadratic g^2 and an argument series u (coefficients 1..m), the
 * coefficients 1..n of y = g(x0 + u(t)) follow from
 *     k y_k = sum_{j=1}^{min(k,m)} j u_j v_{k-j},
 *     v_0   = g'(x0),
 *     v_k   = (linear + 2 quadratic y_0) y_k + quadratic sum_{i=1}^{k-1} y_i y_{k-i}.
 * The eager version runs each product over the whole tensor (85 passes over memory at order 10);
 * here a block of elements keeps every order on the stack, so the series are read once and
 * written once.
 *
 * Layout: u is (m, E) and y is (n, E), each order contiguous. y0 and slope0 repeat with period P
 * (P == E when they match u elementwise, smaller when they broadcast over u's leading axes:
 * element e reads y0[e % P]). The range [start, stop) lets callers split E between threads.
 *
 * GCC/clang vector extensions: a block is VECTORS vectors of 32 bytes, and each sum runs in
 * VECTORS independent accumulators held in registers (a sum kept in an array went through the
 * stack on every term, 15-20% slower).
 *
 * Portability: the build uses no -mavx2 or -march=native, so a wheel built on one x86-64 machine
 * runs on any other. On x86-64 ELF targets each kernel is cloned (GCC/clang target_clones): an
 * AVX2 version and a baseline one, chosen once by the dynamic loader from the CPU it runs on.
 * setup.py compiles with -ffp-contract=off in both: GCC fused some of a block's vectors and not
 * others, so an element's last bit depended on where in its block it sat.
 *
 * ABI: bump HOPE_KERNEL_ABI here and _ABI in native.py together whenever a signature or the
 * meaning of an argument changes; native.py refuses a file that reports another number (a stale
 * build in an editable install).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#if !defined(__GNUC__)
#error "the series kernel needs GCC or clang vector extensions; hope_attr runs its torch loops"
#endif

#define MAX_ORDER 32
#define VECTORS 8
#define HOPE_KERNEL_ABI 2

#if defined(__x86_64__) && defined(__ELF__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif

/* Eight accumulators, one per vector of the block: acc_q += a[q] * b[q]. */
#define ACCUMULATE(acc, a, b)                                                                  \
  do {                                                                                         \
    acc##0 += (a)[0] * (b)[0]; acc##1 += (a)[1] * (b)[1];                                      \
    acc##2 += (a)[2] * (b)[2]; acc##3 += (a)[3] * (b)[3];                                      \
    acc##4 += (a)[4] * (b)[4]; acc##5 += (a)[5] * (b)[5];                                      \
    acc##6 += (a)[6] * (b)[6]; acc##7 += (a)[7] * (b)[7];                                      \
  } while (0)
#define ZERO(acc, V) V acc##0 = {0}, acc##1 = {0}, acc##2 = {0}, acc##3 = {0},                 \
                       acc##4 = {0}, acc##5 = {0}, acc##6 = {0}, acc##7 = {0}
#define STORE(target, acc)                                                                     \
  do {                                                                                         \
    (target)[0] = acc##0; (target)[1] = acc##1; (target)[2] = acc##2; (target)[3] = acc##3;    \
    (target)[4] = acc##4; (target)[5] = acc##5; (target)[6] = acc##6; (target)[7] = acc##7;    \
  } while (0)

#define RICCATI(NAME, T, V)                                                                    \
  typedef T V __attribute__((vector_size(32)));                                                \
  CLONES void NAME(T *restrict y, const T *restrict u, const T *restrict y0,                   \
                   const T *restrict slope0, long E, long P, int m, int n, double linear,      \
                   double quadratic, long start, long stop) {                                  \
    enum { LANES = 32 / sizeof(T), BLOCK = LANES * VECTORS };                                  \
    V yb[MAX_ORDER + 1][VECTORS], vb[MAX_ORDER][VECTORS], ub[MAX_ORDER + 1][VECTORS];          \
    V gain[VECTORS], sums[VECTORS];                                                            \
    const T lin = (T)linear, quad = (T)quadratic;                                              \
    for (long e0 = start; e0 < stop; e0 += BLOCK) {                                            \
      const int w = stop - e0 < BLOCK ? (int)(stop - e0) : BLOCK;                              \
      T value[BLOCK] = {0}, slope[BLOCK] = {0}, column[BLOCK] = {0};                           \
      long p = e0 % P;                                                                         \
      for (int l = 0; l < w; l++) {                                                            \
        value[l] = y0[p];                                                                      \
        slope[l] = slope0[p];                                                                  \
        if (++p == P) p = 0;                                                                   \
      }                                                                                        \
      memcpy(gain, value, sizeof value);                                                       \
      memcpy(vb[0], slope, sizeof slope);                                                      \
      for (int q = 0; q < VECTORS; q++) gain[q] = lin + 2 * quad * gain[q];                    \
      /* ub[j] = j u_j: the factor j of every product, applied once. */                       \
      for (int j = 1; j <= m; j++) {                                                           \
        memcpy(column, u + (long)(j - 1) * E + e0, w * sizeof(T));                             \
        memcpy(ub[j], column, sizeof column);                                                  \
        for (int q = 0; q < VECTORS; q++) ub[j][q] *= (T)j;                                    \
      }                                                                                        \
      for (int k = 1; k <= n; k++) {                                                           \
        ZERO(c, V);                                                                            \
        const int last = k < m ? k : m;                                                        \
        for (int j = 1; j <= last; j++) ACCUMULATE(c, ub[j], vb[k - j]);                       \
        STORE(sums, c);                                                                        \
        for (int q = 0; q < VECTORS; q++) yb[k][q] = sums[q] * ((T)1 / (T)k);                  \
        if (k == n) break;                                                                     \
        /* [y^2]_k without y_0: each pair once, doubled, plus the middle square. */           \
        ZERO(s, V);                                                                            \
        for (int i = 1; i <= (k - 1) / 2; i++) ACCUMULATE(s, yb[i], yb[k - i]);                \
        STORE(sums, s);                                                                        \
        for (int q = 0; q < VECTORS; q++) {                                                    \
          V square = 2 * sums[q];                                                              \
          if (k % 2 == 0) square += yb[k / 2][q] * yb[k / 2][q];                               \
          vb[k][q] = gain[q] * yb[k][q] + quad * square;                                       \
        }                                                                                      \
      }                                                                                        \
      for (int k = 1; k <= n; k++) memcpy(y + (long)(k - 1) * E + e0, yb[k], w * sizeof(T));   \
    }                                                                                          \
  }

RICCATI(hope_riccati_float32, float, vector_float)
RICCATI(hope_riccati_float64, double, vector_double)

int hope_max_order(void) { return MAX_ORDER; }

int hope_kernel_abi(void) { return HOPE_KERNEL_ABI; }

/* Importable like any extension module (and required by the build on Windows), but empty. */
static struct PyModuleDef series_kernel_module = {
    PyModuleDef_HEAD_INIT, "_series_kernel",
    "The compiled series kernel; hope_attr.engine.native opens it with ctypes.", -1, NULL,
};

PyMODINIT_FUNC PyInit__series_kernel(void) { return PyModule_Create(&series_kernel_module); }
