// Per-row softmax, forward KL and its logit gradient over a chunk of fp32 logits: the elementwise part of
// the CPU path of fused_linear_kl (vgid_dist/losses/fused_kl.py). Built on first use by
// vgid_dist/losses/cpu_kernel.py against this torch's headers (ATen's Vectorized<float>, whose exp is
// SLEEF's) and called through ctypes; rows are spread over torch's intra-op threads.
//
// Why a kernel: in eager torch each step of "row max, exp, sum, dot, softmax difference" is its own pass
// over the [rows, V] chunk in DRAM (about ten of them). Here a row (V floats, ~600 KB at V = 152k) is read
// from DRAM by the max pass and then stays in the core's L2 for the other two passes.
//
// For each row r of the [rows, V] logits s (student) and t (teacher), both already divided by T:
//   kl[r]  = sum_v p_t(v) (log p_t(v) - log p_s(v))     always, accumulated in double
//   s[r,:] <- softmax(s[r,:]) - softmax(t[r,:])          only if want_grad
//   t[r,:] is overwritten with scratch (exp of the shifted teacher logits).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
// Partial sums of this many elements stay in float lanes before they are added to a double, so a
// 150k-term sum loses no more than a few fp32 ulps.
constexpr int64_t kSumBlock = 2048;

float row_max(const float* x, int64_t vocab) {
  Vec acc(-std::numeric_limits<float>::infinity());
  int64_t v = 0;
  for (; v + kLanes <= vocab; v += kLanes) acc = at::vec::maximum(acc, Vec::loadu(x + v));
  float m = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, acc);
  for (; v < vocab; v++) m = std::isnan(x[v]) ? x[v] : std::max(m, x[v]);
  return m;
}

float lane_sum(const Vec& x) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, x);
}

void kl_one_row(float* s, float* t, int64_t vocab, bool want_grad, double* kl) {
  const float max_s = row_max(s, vocab), max_t = row_max(t, vocab);
  const Vec vmax_s(max_s), vmax_t(max_t);
  // z_s = sum exp(s'), z_t = sum exp(t'), dot = sum exp(t') (t' - s'), where s' = s - max_s, t' = t - max_t.
  double z_s = 0.0, z_t = 0.0, dot = 0.0;
  int64_t v = 0;
  while (v + kLanes <= vocab) {
    const int64_t block_end = std::min(vocab, v + kSumBlock);
    Vec bz_s(0.0f), bz_t(0.0f), bdot(0.0f);
    for (; v + kLanes <= block_end; v += kLanes) {
      const Vec xs = Vec::loadu(s + v) - vmax_s, xt = Vec::loadu(t + v) - vmax_t;
      const Vec es = xs.exp_u20(), et = xt.exp_u20();  // ~20 ulp: far below fp32 GEMM rounding
      bz_s = bz_s + es;
      bz_t = bz_t + et;
      bdot = at::vec::fmadd(et, xt - xs, bdot);
      es.store(s + v);
      et.store(t + v);
    }
    z_s += lane_sum(bz_s);
    z_t += lane_sum(bz_t);
    dot += lane_sum(bdot);
  }
  for (; v < vocab; v++) {
    const float xs = s[v] - max_s, xt = t[v] - max_t;
    const float es = std::exp(xs), et = std::exp(xt);
    z_s += es;
    z_t += et;
    dot += static_cast<double>(et) * (xt - xs);
    s[v] = es;
    t[v] = et;
  }
  // log p_t - log p_s = (t' - s') - log z_t + log z_s, and sum_v p_t = 1.
  *kl = dot / z_t + std::log(z_s) - std::log(z_t);
  if (!want_grad) return;
  const float inv_s = static_cast<float>(1.0 / z_s), inv_t = static_cast<float>(1.0 / z_t);
  const Vec vinv_s(inv_s), vinv_t(inv_t);
  v = 0;
  for (; v + kLanes <= vocab; v += kLanes) {
    (Vec::loadu(s + v) * vinv_s - Vec::loadu(t + v) * vinv_t).store(s + v);
  }
  for (; v < vocab; v++) s[v] = s[v] * inv_s - t[v] * inv_t;
}

}  // namespace

// s, t: row-major [rows, vocab] with row stride `stride` (elements); kl: [rows] doubles.
extern "C" void vgid_kl_rows(float* s, float* t, int64_t rows, int64_t vocab, int64_t stride, int want_grad,
                             double* kl) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) kl_one_row(s + r * stride, t + r * stride, vocab, want_grad != 0, kl + r);
  });
}
