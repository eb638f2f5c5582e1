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
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

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
  float lanes[W];
  v.store(lanes);
  float s = 0.f;
  for (int64_t i = 0; i < W; i++) s += lanes[i];
  return s;
}

float maximum(Vec v) {
  float lanes[W];
  v.store(lanes);
  float m = lanes[0];
  for (int64_t i = 1; i < W; i++) m = std::max(m, lanes[i]);
  return m;
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

at::Tensor causal_softmax_(at::Tensor s, double scale) {
  check(s, "scores");
  TORCH_CHECK(s.dim() == 3 && s.size(1) == s.size(2), "smolforge kernels: causal_softmax_ wants (N, T, T) scores");
  const int64_t T = s.size(1), rows = s.size(0) * T;
  const float sc = static_cast<float>(scale);
  float* sp = s.data_ptr<float>();
  at::parallel_for(0, rows, grain(T / 2 + 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      float* row = sp + r * T;
      const int64_t n = r % T + 1;  // keys this query may see
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
  });
  return s;
}

// dp (N, T, T), the gradient of the probabilities p, becomes the gradient of the scaled
// scores in place: p * (dp - sum(dp * p)) on the causal half, zeros above.
at::Tensor causal_softmax_backward_(at::Tensor dp, const at::Tensor& p) {
  check(dp, "dp");
  check(p, "p");
  TORCH_CHECK(dp.sizes() == p.sizes() && p.dim() == 3 && p.size(1) == p.size(2),
              "smolforge kernels: causal_softmax_backward_ wants dp and p of one (N, T, T) shape");
  const int64_t T = p.size(1), rows = p.size(0) * T;
  float* dpp = dp.data_ptr<float>();
  const float* pp = p.data_ptr<float>();
  at::parallel_for(0, rows, grain(T + 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      float* d = dpp + r * T;
      const float* q = pp + r * T;
      const int64_t n = r % T + 1;
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
  });
  return dp;
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

}  // namespace

TORCH_LIBRARY(smolforge, m) {
  m.def("swiglu(Tensor h) -> Tensor", swiglu);
  m.def("swiglu_backward_(Tensor(a!) h, Tensor g) -> Tensor(a!)", swiglu_backward_);
  m.def("rms_scale(Tensor x, float eps) -> (Tensor, Tensor)", rms_scale);
  m.def("rms_scale_backward(Tensor g, Tensor y, Tensor rstd) -> Tensor", rms_scale_backward);
  m.def("causal_softmax_(Tensor(a!) s, float scale) -> Tensor(a!)", causal_softmax_);
  m.def("causal_softmax_backward_(Tensor(a!) dp, Tensor p) -> Tensor(a!)", causal_softmax_backward_);
  m.def("rope(Tensor qkv, Tensor cosx, Tensor sinx, int H, int KV) -> Tensor", rope);
  m.def("rope_backward(Tensor dq, Tensor dk, Tensor dv, Tensor cosx, Tensor sinx) -> Tensor", rope_backward);
}
