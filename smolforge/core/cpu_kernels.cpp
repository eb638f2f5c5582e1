// Fused float32 CPU kernels for the training Llama's memory-bound steps
// (smolforge/core/llama.py). Built on first use by smolforge/core/cpu_kernels.py with
// -march=native and loaded as torch custom ops: torch.ops.smolforge.<name>.
//
// Why: on the CPU, SwiGLU, RMSNorm and the causal softmax written as torch ops make one
// pass over a (B, T, F) or (N, T, T) tensor per op, and each pass is bound by memory, not
// arithmetic. Here each is one pass (or two over a row that stays in L1), with the same
// vectorized exp aten uses (at::vec), threaded over rows by torch's own thread pool
// (at::parallel_for), so `torch.set_num_threads` governs them as it governs aten.
//
// Every op takes contiguous float32 tensors (the Python side checks and falls back to
// torch ops otherwise) and computes the function its docstring in llama.py names.

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "smolforge kernels: ",
              name, " must be a contiguous float32 CPU tensor");
}

// rows of `row_len` floats per thread chunk: about 16K floats of work each
int64_t grain(int64_t row_len) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_len)); }

float sum(Vec v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

float maximum(Vec v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

// ---- SwiGLU: h = [gate | up] (rows, 2F) -> silu(gate) * up (rows, F)

at::Tensor swiglu(const at::Tensor& h) {
  check(h, "h");
  const int64_t F = h.size(-1) / 2, rows = h.numel() / std::max<int64_t>(1, 2 * F);
  auto sizes = h.sizes().vec();
  sizes.back() = F;
  at::Tensor out = at::empty(sizes, h.options());
  const float* hp = h.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, grain(2 * F), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float *gate = hp + r * 2 * F, *up = gate + F;
      float* o = op + r * F;
      int64_t j = 0;
      for (; j + W <= F; j += W) {
        Vec x = Vec::loadu(gate + j);
        (x / (Vec(1.f) + x.neg().exp()) * Vec::loadu(up + j)).store(o + j);
      }
      for (; j < F; j++) o[j] = gate[j] / (1.f + std::exp(-gate[j])) * up[j];
    }
  });
  return out;
}

// g (rows, F) the gradient of silu(gate) * up; h is overwritten with [d gate | d up]:
// d gate = g * up * sig * (1 + gate * (1 - sig)), d up = g * gate * sig, sig = sigmoid(gate)
at::Tensor swiglu_backward_(at::Tensor h, const at::Tensor& g) {
  check(h, "h");
  check(g, "g");
  const int64_t F = h.size(-1) / 2, rows = h.numel() / std::max<int64_t>(1, 2 * F);
  TORCH_CHECK(g.numel() == rows * F, "smolforge kernels: swiglu_backward_: g has ", g.numel(), " elements, want ",
              rows * F);
  float* hp = h.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  at::parallel_for(0, rows, grain(3 * F), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      float *gate = hp + r * 2 * F, *up = gate + F;
      const float* d = gp + r * F;
      int64_t j = 0;
      const Vec one(1.f);
      for (; j + W <= F; j += W) {
        Vec x = Vec::loadu(gate + j), u = Vec::loadu(up + j), dy = Vec::loadu(d + j);
        Vec sig = one / (one + x.neg().exp());
        Vec dyu = dy * u;
        (dyu * sig * (one + x * (one - sig))).store(gate + j);
        (dy * x * sig).store(up + j);
      }
      for (; j < F; j++) {
        const float x = gate[j], u = up[j], sig = 1.f / (1.f + std::exp(-x));
        gate[j] = d[j] * u * sig * (1.f + x * (1.f - sig));
        up[j] = d[j] * x * sig;
      }
    }
  });
  return h;
}

// ---- x / rms(x) over rows of C: returns (y, rstd (rows, 1))

std::tuple<at::Tensor, at::Tensor> rms_scale(const at::Tensor& x, double eps) {
  check(x, "x");
  const int64_t C = x.size(-1), rows = x.numel() / std::max<int64_t>(1, C);
  at::Tensor y = at::empty_like(x);
  auto rsizes = x.sizes().vec();
  rsizes.back() = 1;
  at::Tensor rstd = at::empty(rsizes, x.options());
  const float* xp = x.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  at::parallel_for(0, rows, grain(C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float* a = xp + r * C;
      float* b = yp + r * C;
      Vec acc(0.f);
      int64_t j = 0;
      for (; j + W <= C; j += W) {
        Vec v = Vec::loadu(a + j);
        acc = at::vec::fmadd(v, v, acc);
      }
      float ss = sum(acc);
      for (; j < C; j++) ss += a[j] * a[j];
      const float s = 1.f / std::sqrt(ss / C + static_cast<float>(eps));
      rp[r] = s;
      j = 0;
      for (; j + W <= C; j += W) (Vec::loadu(a + j) * Vec(s)).store(b + j);
      for (; j < C; j++) b[j] = a[j] * s;
    }
  });
  return {y, rstd};
}

// dx = rstd * (g - y * mean(g * y)), rows of C
at::Tensor rms_scale_backward(const at::Tensor& g, const at::Tensor& y, const at::Tensor& rstd) {
  check(g, "g");
  check(y, "y");
  check(rstd, "rstd");
  const int64_t C = y.size(-1), rows = y.numel() / std::max<int64_t>(1, C);
  at::Tensor dx = at::empty_like(y);
  const float *gp = g.data_ptr<float>(), *yp = y.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
  at::parallel_for(0, rows, grain(2 * C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float *a = gp + r * C, *b = yp + r * C;
      float* o = dp + r * C;
      Vec acc(0.f);
      int64_t j = 0;
      for (; j + W <= C; j += W) acc = at::vec::fmadd(Vec::loadu(a + j), Vec::loadu(b + j), acc);
      float dot = sum(acc);
      for (; j < C; j++) dot += a[j] * b[j];
      const float mean = dot / C, s = rp[r];
      j = 0;
      for (; j + W <= C; j += W) ((Vec::loadu(a + j) - Vec::loadu(b + j) * Vec(mean)) * Vec(s)).store(o + j);
      for (; j < C; j++) o[j] = (a[j] - b[j] * mean) * s;
    }
  });
  return dx;
}

// ---- causal softmax, in place over scores (N, T, T): row i of each matrix becomes
// softmax(scale * s[i, :i+1]) followed by zeros; the masked half is never read.

// row[:n] = softmax(scale * row[:n]), row[n:T] = 0
void softmax_row(float* row, int64_t n, int64_t T, float sc) {
  Vec vmax(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + W <= n; j += W) vmax = at::vec::maximum(vmax, Vec::loadu(row + j));
  float m = maximum(vmax);
  for (; j < n; j++) m = std::max(m, row[j]);
  const Vec vm(m * sc), vsc(sc);
  Vec acc(0.f);
  j = 0;
  for (; j + W <= n; j += W) {
    Vec e = at::vec::fmsub(Vec::loadu(row + j), vsc, vm).exp();
    e.store(row + j);
    acc = acc + e;
  }
  float total = sum(acc);
  for (; j < n; j++) {
    row[j] = std::exp(row[j] * sc - m * sc);
    total += row[j];
  }
  const Vec inv(1.f / total);
  j = 0;
  for (; j + W <= n; j += W) (Vec::loadu(row + j) * inv).store(row + j);
  for (; j < n; j++) row[j] *= 1.f / total;
  std::fill(row + n, row + T, 0.f);
}

// d[:n] = p[:n] * (d[:n] - sum(d[:n] * p[:n])), d[n:T] = 0
void softmax_backward_row(float* d, const float* q, int64_t n, int64_t T) {
  Vec acc(0.f);
  int64_t j = 0;
  for (; j + W <= n; j += W) acc = at::vec::fmadd(Vec::loadu(d + j), Vec::loadu(q + j), acc);
  float dot = sum(acc);
  for (; j < n; j++) dot += d[j] * q[j];
  const Vec vdot(dot);
  j = 0;
  for (; j + W <= n; j += W) (Vec::loadu(q + j) * (Vec::loadu(d + j) - vdot)).store(d + j);
  for (; j < n; j++) d[j] = q[j] * (d[j] - dot);
  std::fill(d + n, d + T, 0.f);
}

// ---- RoPE: qkv (B, T, (H + 2 KV) D), q and k heads pair-interleaved, -> out (H + 2 KV,
// B, T, D) head-major, q and k heads rotated pair by pair (x[2i], x[2i+1]) as complex
// numbers by cos + i sin, v heads copied. cosx, sinx (Bc, T, D), Bc 1 or B: each angle's
// cos twice, and its sin as (-sin, +sin), so that out[j] = x[j] cosx[j] + x[j^1] sinx[j].
// The backward is the same map with conj: sign -1.

// x[j ^ 1] for every lane j: each (2i, 2i + 1) pair swapped
inline Vec swap_pairs(Vec v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_permute_ps(v, 0xB1);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_permute_ps(v, 0xB1);
#else
  float a[W];
  v.store(a);
  for (int64_t j = 0; j < W; j += 2) std::swap(a[j], a[j + 1]);
  return Vec::loadu(a);
#endif
}

// o = x cx + sign * swap_pairs(x) sx over one head of D (even) floats
template <int sign>
inline void rotate(const float* x, const float* cx, const float* sx, float* o, int64_t D) {
  int64_t j = 0;
  for (; j + W <= D; j += W) {
    Vec v = Vec::loadu(x + j), t = swap_pairs(v) * Vec::loadu(sx + j);
    (sign > 0 ? at::vec::fmadd(v, Vec::loadu(cx + j), t) : at::vec::fmsub(v, Vec::loadu(cx + j), t)).store(o + j);
  }
  for (; j < D; j++) o[j] = x[j] * cx[j] + sign * x[j ^ 1] * sx[j];
}

at::Tensor rope(const at::Tensor& qkv, const at::Tensor& cosx, const at::Tensor& sinx, int64_t H, int64_t KV) {
  check(qkv, "qkv");
  check(cosx, "cosx");
  check(sinx, "sinx");
  const int64_t B = qkv.size(0), T = qkv.size(1), NH = H + 2 * KV, D = qkv.size(2) / NH;
  const int64_t Bc = cosx.size(0);
  TORCH_CHECK(D % 2 == 0 && cosx.size(1) == T && cosx.size(2) == D && (Bc == 1 || Bc == B),
              "smolforge kernels: rope: cos/sin tables do not match qkv");
  at::Tensor out = at::empty({NH, B, T, D}, qkv.options());
  const float *xp = qkv.data_ptr<float>(), *cp = cosx.data_ptr<float>(), *sp = sinx.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * T, grain(NH * D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const int64_t b = r / T, t = r % T, c = ((Bc == 1 ? 0 : b) * T + t) * D;
      const float *cx = cp + c, *sx = sp + c, *x = xp + r * NH * D;
      for (int64_t h = 0; h < NH; h++, x += D) {
        float* o = op + ((h * B + b) * T + t) * D;
        if (h < H + KV) {
          rotate<1>(x, cx, sx, o, D);
        } else {
          std::copy(x, x + D, o);
        }
      }
    }
  });
  return out;
}

// dq (H, B, T, D), dk and dv (KV, B, T, D), contiguous -> d qkv (B, T, (H + 2 KV) D)
at::Tensor rope_backward(const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv, const at::Tensor& cosx,
                         const at::Tensor& sinx) {
  check(dq, "dq");
  check(dk, "dk");
  check(dv, "dv");
  const int64_t H = dq.size(0), KV = dk.size(0), B = dq.size(1), T = dq.size(2), D = dq.size(3), NH = H + 2 * KV;
  const int64_t Bc = cosx.size(0);
  at::Tensor d = at::empty({B, T, NH * D}, dq.options());
  const float *qp = dq.data_ptr<float>(), *kp = dk.data_ptr<float>(), *vp = dv.data_ptr<float>();
  const float *cp = cosx.data_ptr<float>(), *sp = sinx.data_ptr<float>();
  float* out = d.data_ptr<float>();
  at::parallel_for(0, B * T, grain(NH * D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const int64_t b = r / T, t = r % T, c = ((Bc == 1 ? 0 : b) * T + t) * D;
      const float *cx = cp + c, *sx = sp + c;
      float* o = out + r * NH * D;
      for (int64_t h = 0; h < NH; h++, o += D) {
        const float* x = h < H ? qp + ((h * B + b) * T + t) * D
                         : h < H + KV ? kp + (((h - H) * B + b) * T + t) * D
                                      : vp + (((h - H - KV) * B + b) * T + t) * D;
        if (h < H + KV) {
          rotate<-1>(x, cx, sx, o, D);
        } else {
          std::copy(x, x + D, o);
        }
      }
    }
  });
  return d;
}

// ---- causal attention over short rows, head by head: each head's q, k, v (T, D), its
// (T, T) probabilities and its scratch stay in L1/L2, and only the causal half of every
// product is computed (bmm computes all of it). Register blocks of RB rows: each vector
// load feeds RB multiply-adds.

constexpr int64_t RB = 8;

// c[i][j] = sum_d a[i][d] bT[d][j] for j < (end of i's row block), i < T; a rows of D
// floats at stride lda; bT (D, T); c (T, T). Entries right of the diagonal are scratch.
void causal_scores(const float* a, int64_t lda, const float* bT, int64_t T, int64_t D, float* c) {
  for (int64_t i0 = 0; i0 < T; i0 += RB) {
    const int64_t jend = std::min(T, i0 + RB);
    for (int64_t j0 = 0; j0 < jend; j0 += W) {
      const int64_t n = std::min(W, T - j0);
      Vec acc[RB];
      for (int64_t r = 0; r < RB; r++) acc[r] = Vec(0.f);
      for (int64_t d = 0; d < D; d++) {
        const Vec b = Vec::loadu(bT + d * T + j0, n);
        for (int64_t r = 0; r < RB; r++) acc[r] = at::vec::fmadd(Vec(a[std::min(i0 + r, T - 1) * lda + d]), b, acc[r]);
      }
      for (int64_t r = 0; r < RB && i0 + r < T; r++) acc[r].store(c + (i0 + r) * T + j0, n);
    }
  }
}

// c[i] = alpha sum_{j <= i} p[i][j] b[j], rows of D floats; p (T, T) zero right of the
// diagonal; b rows at stride ldb, c rows at stride ldc.
void causal_mix(const float* p, const float* b, int64_t ldb, int64_t T, int64_t D, float* c, int64_t ldc,
                float alpha) {
  for (int64_t i0 = 0; i0 < T; i0 += RB) {
    const int64_t jend = std::min(T, i0 + RB);
    for (int64_t d0 = 0; d0 < D; d0 += W) {
      const int64_t n = std::min(W, D - d0);
      Vec acc[RB];
      for (int64_t r = 0; r < RB; r++) acc[r] = Vec(0.f);
      for (int64_t j = 0; j < jend; j++) {
        const Vec bv = Vec::loadu(b + j * ldb + d0, n);
        for (int64_t r = 0; r < RB; r++) acc[r] = at::vec::fmadd(Vec(p[std::min(i0 + r, T - 1) * T + j]), bv, acc[r]);
      }
      for (int64_t r = 0; r < RB && i0 + r < T; r++) (acc[r] * Vec(alpha)).store(c + (i0 + r) * ldc + d0, n);
    }
  }
}

// c[j] = alpha sum_{i >= j} p[i][j] b[i]: causal_mix with p transposed.
void causal_mix_t(const float* p, const float* b, int64_t ldb, int64_t T, int64_t D, float* c, int64_t ldc,
                  float alpha) {
  for (int64_t j0 = 0; j0 < T; j0 += RB) {
    for (int64_t d0 = 0; d0 < D; d0 += W) {
      const int64_t n = std::min(W, D - d0);
      Vec acc[RB];
      for (int64_t r = 0; r < RB; r++) acc[r] = Vec(0.f);
      for (int64_t i = j0; i < T; i++) {  // p[i][j] = 0 for i < j
        const Vec bv = Vec::loadu(b + i * ldb + d0, n);
        for (int64_t r = 0; r < RB; r++) acc[r] = at::vec::fmadd(Vec(p[i * T + std::min(j0 + r, T - 1)]), bv, acc[r]);
      }
      for (int64_t r = 0; r < RB && j0 + r < T; r++) (acc[r] * Vec(alpha)).store(c + (j0 + r) * ldc + d0, n);
    }
  }
}

void transpose(const float* a, int64_t T, int64_t D, float* out) {  // (T, D) -> (D, T)
  for (int64_t j = 0; j < T; j++)
    for (int64_t d = 0; d < D; d++) out[d * T + j] = a[j * D + d];
}

// Rotate T rows of a head: out[t] = rotate(x[t]) (rows of D at stride ldx), by the
// tables' rows t (sign +1) or back (sign -1).
template <int sign>
void rotate_rows(const float* x, int64_t ldx, const float* cx, const float* sx, int64_t T, int64_t D, float* out,
                 int64_t ldo) {
  for (int64_t t = 0; t < T; t++) rotate<sign>(x + t * ldx, cx + t * D, sx + t * D, out + t * ldo, D);
}

// qkv (B, T, (H + 2 KV) D), q and k heads pair-interleaved as for `rope` -> y (B, T, H D)
// = softmax(rot(q) rot(k)^T * scale, causal) v, and the probabilities p (B H, T, T),
// zeros right of the diagonal, for the backward. RoPE is applied on the way in, in L1:
// no rotated copy of q and k is written. Work is split by (batch row, KV head), so a
// KV head's gradient (backward) is summed by one thread.
std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& qkv, const at::Tensor& cosx, const at::Tensor& sinx,
                                             int64_t H, int64_t KV, double scale) {
  check(qkv, "qkv");
  check(cosx, "cosx");
  check(sinx, "sinx");
  const int64_t B = qkv.size(0), T = qkv.size(1), NH = H + 2 * KV, D = qkv.size(2) / NH, G = H / KV;
  const int64_t Bc = cosx.size(0), L = NH * D;
  TORCH_CHECK(D % 2 == 0 && H % KV == 0 && cosx.size(1) == T && cosx.size(2) == D && (Bc == 1 || Bc == B),
              "smolforge kernels: attention: qkv and the cos/sin tables do not match");
  at::Tensor y = at::empty({B, T, H * D}, qkv.options());
  at::Tensor p = at::empty({B * H, T, T}, qkv.options());
  const float *xp = qkv.data_ptr<float>(), *cp = cosx.data_ptr<float>(), *sp = sinx.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *pp = p.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * KV, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qr(T * D), kr(T * D), kT(D * T);
    for (int64_t task = begin; task < end; task++) {
      const int64_t b = task / KV, g = task % KV;
      const float *row = xp + b * T * L, *cx = cp + (Bc == 1 ? 0 : b) * T * D, *sx = sp + (Bc == 1 ? 0 : b) * T * D;
      rotate_rows<1>(row + (H + g) * D, L, cx, sx, T, D, kr.data(), D);
      transpose(kr.data(), T, D, kT.data());
      for (int64_t h = g * G; h < (g + 1) * G; h++) {
        float* pn = pp + (b * H + h) * T * T;
        rotate_rows<1>(row + h * D, L, cx, sx, T, D, qr.data(), D);
        causal_scores(qr.data(), D, kT.data(), T, D, pn);
        for (int64_t i = 0; i < T; i++) softmax_row(pn + i * T, i + 1, T, sc);
        causal_mix(pn, row + (H + KV + g) * D, L, T, D, yp + b * T * H * D + h * D, H * D, 1.f);
      }
    }
  });
  return {y, p};
}

// dy (B, T, H D) -> d qkv (B, T, (H + 2 KV) D), from attention's inputs and p.
at::Tensor attention_backward(const at::Tensor& dy, const at::Tensor& qkv, const at::Tensor& cosx,
                              const at::Tensor& sinx, const at::Tensor& p, int64_t H, int64_t KV, double scale) {
  check(dy, "dy");
  check(p, "p");
  const int64_t B = qkv.size(0), T = qkv.size(1), NH = H + 2 * KV, D = qkv.size(2) / NH, G = H / KV;
  const int64_t Bc = cosx.size(0), L = NH * D;
  TORCH_CHECK(dy.numel() == B * T * H * D && p.numel() == B * H * T * T,
              "smolforge kernels: attention_backward: dy or p does not match qkv");
  at::Tensor dqkv = at::empty_like(qkv);
  const float *gp = dy.data_ptr<float>(), *xp = qkv.data_ptr<float>(), *pp = p.data_ptr<float>();
  const float *cp = cosx.data_ptr<float>(), *sp = sinx.data_ptr<float>();
  float* dp = dqkv.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * KV, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qr(T * D), kr(T * D), vT(D * T), ds(T * T), dk(T * D), dv(T * D), part(T * D);
    for (int64_t task = begin; task < end; task++) {
      const int64_t b = task / KV, g = task % KV;
      const float *row = xp + b * T * L, *cx = cp + (Bc == 1 ? 0 : b) * T * D, *sx = sp + (Bc == 1 ? 0 : b) * T * D;
      float* drow = dp + b * T * L;
      rotate_rows<1>(row + (H + g) * D, L, cx, sx, T, D, kr.data(), D);
      for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) vT[d * T + t] = row[t * L + (H + KV + g) * D + d];
      std::fill(dk.begin(), dk.end(), 0.f);
      std::fill(dv.begin(), dv.end(), 0.f);
      for (int64_t h = g * G; h < (g + 1) * G; h++) {
        const float *pn = pp + (b * H + h) * T * T, *gy = gp + b * T * H * D + h * D;
        rotate_rows<1>(row + h * D, L, cx, sx, T, D, qr.data(), D);
        causal_mix_t(pn, gy, H * D, T, D, part.data(), D, 1.f);  // dv += p^T dy
        for (int64_t j = 0; j < T * D; j++) dv[j] += part[j];
        causal_scores(gy, H * D, vT.data(), T, D, ds.data());  // dp = dy v^T
        for (int64_t i = 0; i < T; i++) softmax_backward_row(ds.data() + i * T, pn + i * T, i + 1, T);
        causal_mix(ds.data(), kr.data(), D, T, D, part.data(), D, sc);  // d rot(q) = scale ds rot(k)
        rotate_rows<-1>(part.data(), D, cx, sx, T, D, drow + h * D, L);
        causal_mix_t(ds.data(), qr.data(), D, T, D, part.data(), D, sc);  // d rot(k) += scale ds^T rot(q)
        for (int64_t j = 0; j < T * D; j++) dk[j] += part[j];
      }
      rotate_rows<-1>(dk.data(), D, cx, sx, T, D, drow + (H + g) * D, L);
      for (int64_t t = 0; t < T; t++) std::copy(dv.data() + t * D, dv.data() + (t + 1) * D, drow + t * L + (H + KV + g) * D);
    }
  });
  return dqkv;
}

}  // namespace

TORCH_LIBRARY(smolforge, m) {
  m.def("swiglu(Tensor h) -> Tensor", swiglu);
  m.def("swiglu_backward_(Tensor(a!) h, Tensor g) -> Tensor(a!)", swiglu_backward_);
  m.def("rms_scale(Tensor x, float eps) -> (Tensor, Tensor)", rms_scale);
  m.def("rms_scale_backward(Tensor g, Tensor y, Tensor rstd) -> Tensor", rms_scale_backward);
  m.def("attention(Tensor qkv, Tensor cosx, Tensor sinx, int H, int KV, float scale) -> (Tensor, Tensor)", attention);
  m.def("attention_backward(Tensor dy, Tensor qkv, Tensor cosx, Tensor sinx, Tensor p, int H, int KV, float scale) -> Tensor",
        attention_backward);
  m.def("rope(Tensor qkv, Tensor cosx, Tensor sinx, int H, int KV) -> Tensor", rope);
  m.def("rope_backward(Tensor dq, Tensor dk, Tensor dv, Tensor cosx, Tensor sinx) -> Tensor", rope_backward);
}
