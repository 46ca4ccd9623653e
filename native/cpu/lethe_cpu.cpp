// Lethe Edge CPU backend: implements native/lethe.h with SIMD kernels (kernels.h) and OpenMP.
//
// Threads are used only where a kernel's work is large: on tiny models (stories260K) the fork/join cost of a
// parallel region is larger than the whole matmul, so those run single-threaded.
#include "../lethe.h"

#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "../common/abi.h"
#include "kernels.h"

using namespace lethe;

namespace {

// Sets lethe_last_error (native/common/abi.cpp) and returns 1, the ABI's error code.
int fail(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  lethe_abi::fail("%s", buf);
  return 1;
}

// Multiply-adds below which a matmul / attention runs on one thread (~1 ms of one core: a fork/join on a
// busy 2-core machine can cost that much; tiny models such as stories260K then never thread).
// lethe_config.parallel_work overrides it per model. Lower values (4M, 2M, 1M) were measured on the
// 2-core dev machine (mid shape, f16 KV, median step times): batch 4/16 decode no faster (within noise), and
// 1M slowed stories260K prefill and decode, so the threshold stays one for all N.
const double kParallelWork = 1 << 23;

// A weight matrix [rows x cols] in its storage type (F32, F16, Q8_0 or Q4_0).
struct Mat {
  int type = -1;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
  std::vector<uint8_t> data;
  bool set() const { return type >= 0; }
  const uint8_t* row(int64_t r) const { return data.data() + (size_t)r * row_bytes; }
};

size_t row_bytes_of(int type, int64_t cols) {
  switch (type) {
    case LETHE_TYPE_F32:
      return (size_t)cols * 4;
    case LETHE_TYPE_F16:
    case LETHE_TYPE_BF16:
      return (size_t)cols * 2;
    case LETHE_TYPE_Q8_0:
      return (size_t)(cols / QK) * Q8_0_BYTES;
    case LETHE_TYPE_Q4_0:
      return (size_t)(cols / QK) * Q4_0_BYTES;
  }
  return 0;
}

// The ggml types this library takes (BF16 is widened to f32 on upload).
bool cpu_type_supported(int32_t type) {
  return type == LETHE_TYPE_F32 || type == LETHE_TYPE_F16 || type == LETHE_TYPE_Q8_0 || type == LETHE_TYPE_Q4_0 ||
         type == LETHE_TYPE_BF16;
}

// Row r of W as f32: a pointer into W (F32) or into `buf` (converted).
inline const float* row_f32(const Mat& W, int64_t r, float* buf) {
  const uint8_t* src = W.row(r);
  switch (W.type) {
    case LETHE_TYPE_F32:
      return (const float*)src;
    case LETHE_TYPE_F16:
      f16_row_to_f32((const uint16_t*)src, buf, W.cols);
      return buf;
    case LETHE_TYPE_Q8_0:
      q8_0_row_to_f32(src, buf, W.cols);
      return buf;
    case LETHE_TYPE_Q4_0:
      q4_0_row_to_f32(src, buf, W.cols);
      return buf;
  }
  return buf;
}

// Rows [r0, r1) of W as f32: pointer into W (F32) or rows converted into `buf` (row stride cols).
inline const float* rows_f32(const Mat& W, int64_t r0, int64_t nr, float* buf) {
  if (W.type == LETHE_TYPE_F32) return (const float*)W.row(r0);
  for (int64_t i = 0; i < nr; i++) row_f32(W, r0 + i, buf + i * W.cols);
  return buf;
}

#ifdef LETHE_AVX512
const int64_t kRowBlock = 6;  // weight rows per micro-kernel block (threads split rows on block boundaries)
#else
const int64_t kRowBlock = 4;
#endif

// Y[n*ldy + r] = W[r] · X[n*cols] for r in [r0, r1), n in [0, N): register-blocked micro-kernels of 6 weight
// rows x 4 activation rows (AVX-512) or 4 x 3 (AVX2); N = 1 streams one row at a time.
void matmul_rows(const Mat& W, const float* X, int64_t N, float* Y, int64_t ldy, int64_t r0, int64_t r1,
                 float* buf) {
  const int64_t cols = W.cols;
  int64_t r = r0;
  if (N == 1) {  // decode: one sequential stream per row is faster than 4 interleaved ones
#ifdef LETHE_AVX2
    if (W.type == LETHE_TYPE_Q8_0) {  // dequantize in registers (same values and order as below)
      for (; r < r1; r++) Y[r] = dot_q8_0(W.row(r), X, cols);
      return;
    }
    if (W.type == LETHE_TYPE_Q4_0) {
      for (; r < r1; r++) Y[r] = dot_q4_0(W.row(r), X, cols);
      return;
    }
    if (W.type == LETHE_TYPE_F16) {
      for (; r < r1; r++) Y[r] = dot_f16((const uint16_t*)W.row(r), X, cols);
      return;
    }
#endif
    for (; r < r1; r++) Y[r] = dot1(rows_f32(W, r, 1, buf), X, cols);
    return;
  }
#ifdef LETHE_AVX512
  // Blocks of 6 weight rows x 4 activation rows (24 zmm accumulators); remainders with smaller blocks.
  for (; r + 6 <= r1; r += 6) {
    const float* w = rows_f32(W, r, 6, buf);
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) dot_block16<6, 4>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
    for (; n + 2 <= N; n += 2) dot_block16<6, 2>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
    for (; n < N; n++) dot_block16<6, 1>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
  }
  for (; r + 2 <= r1; r += 2) {
    const float* w = rows_f32(W, r, 2, buf);
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) dot_block16<2, 4>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
    for (; n < N; n++) dot_block16<2, 1>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
  }
  for (; r < r1; r++) {
    const float* w = rows_f32(W, r, 1, buf);
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) dot_block16<1, 4>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
    for (; n < N; n++) dot_block16<1, 1>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
  }
  return;
#endif
  for (; r + 4 <= r1; r += 4) {
    const float* w = rows_f32(W, r, 4, buf);
    int64_t n = 0;
    for (; n + 3 <= N; n += 3) dot_block<4, 3>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
    for (; n < N; n++) dot_block<4, 1>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
  }
  for (; r < r1; r++) {
    const float* w = rows_f32(W, r, 1, buf);
    int64_t n = 0;
    for (; n + 3 <= N; n += 3) dot_block<1, 3>(w, cols, X + n * cols, cols, cols, Y + n * ldy + r, ldy);
    for (; n < N; n++) Y[n * ldy + r] = dot1(w, X + n * cols, cols);
  }
}

// A model's threading: at most max_threads, and only for kernels of at least parallel_work multiply-adds.
struct Par {
  int max_threads = 1;
  double parallel_work = kParallelWork;
};

int threads_for(const Par& par, double work, int64_t units) {
  if (par.max_threads <= 1 || work < par.parallel_work || units < 2) return 1;
  return (int)std::min<int64_t>(par.max_threads, units);
}

// One output of a fused matmul: Y[N x W.rows] = X · W^T.
struct MatOut {
  const Mat* W;
  float* Y;
};

// Several matmuls over the same activations X[N x cols] (e.g. q/k/v, gate/up) as one: their rows are
// concatenated and split into contiguous, block-aligned ranges, one per thread, so one parallel region covers
// all of them and their summed work decides threading. Each weight row is converted once and dotted with all
// N activation rows.
void matmul_multi(const Par& par, const MatOut* outs, int n_out, const float* X, int64_t N) {
  int64_t total = 0;
  const int64_t cols = outs[0].W->cols;
  for (int j = 0; j < n_out; j++) total += outs[j].W->rows;
  auto run = [&](int64_t a, int64_t b, float* buf) {  // concatenated rows [a, b)
    int64_t off = 0;
    for (int j = 0; j < n_out; j++) {
      const Mat& W = *outs[j].W;
      const int64_t lo = std::max(a, off), hi = std::min(b, off + W.rows);
      if (lo < hi) matmul_rows(W, X, N, outs[j].Y, W.rows, lo - off, hi - off, buf);
      off += W.rows;
    }
  };
  const int nt = threads_for(par, (double)total * (double)cols * (double)N, total / 8);
  if (nt <= 1) {
    thread_local std::vector<float> buf;
    if ((int64_t)buf.size() < kRowBlock * cols) buf.resize(kRowBlock * cols);
    run(0, total, buf.data());
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    thread_local std::vector<float> buf;
    if ((int64_t)buf.size() < kRowBlock * cols) buf.resize(kRowBlock * cols);
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t chunk = ((total + T - 1) / T + kRowBlock - 1) / kRowBlock * kRowBlock;
    const int64_t r0 = std::min(total, (int64_t)t * chunk), r1 = std::min(total, r0 + chunk);
    run(r0, r1, buf.data());
  }
}

// Y[N x rows] = X[N x cols] · W^T.
void matmul(const Par& par, const Mat& W, const float* X, int64_t N, float* Y) {
  const MatOut o{&W, Y};
  matmul_multi(par, &o, 1, X, N);
}

struct Layer {
  std::vector<float> attn_norm, ffn_norm, bq, bk, bv;
  Mat wq, wk, wv, wo, w_gate, w_up, w_down;
};

}  // namespace

struct lethe_model {
  lethe_config cfg;
  Par par;
  int kv_dim = 0, q_dim = 0;
  bool kv_f16 = false;  // K/V rows stored as IEEE half (cfg.kv_type == LETHE_KV_F16)
  int kv_es = 4;  // bytes per stored K/V element
  Mat tok_embd, output;
  std::vector<float> out_norm;
  std::vector<Layer> layers;
  std::vector<double> inv_freq;
  // Per-step scratch (grown as needed).
  std::vector<float> x, xb, q, k, v, att, hb, hb2, rope_cs, lx, lout;
  std::vector<float> head_scores;
};

struct lethe_kv {
  lethe_model* m;
  // One layer's rows live in slots: K/V storage of `cap` slots, each one contiguous row of kv_dim elements.
  // Logical row i (the order of kv_read, compaction and attention) is slot[i], at position pos[i]. Compaction
  // rewrites slot/pos only (O(rows) integers, no K/V copy) and returns the dropped slots to `free`, from which
  // appends take their slots. Every slot in [0, cap) is either in slot[0..len) or in free, exactly once.
  struct L {
    std::vector<uint8_t> k, v;  // [cap x kv_dim] elements of m->kv_es bytes (float or IEEE-half uint16)
    std::vector<int32_t> slot;  // [len] logical row -> slot
    std::vector<int32_t> pos;  // [len] logical row -> original position
    std::vector<int32_t> free;  // unused slots; appends pop from the back
    int32_t len = 0;
    int64_t cap = 0;
  };
  std::vector<L> layers;
};

namespace {

void ensure(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Makes room for `extra` more rows of L (free slots, and slot/pos capacity so appends cannot throw). Growing the
// storage copies every row anyway, so it also defragments: rows are gathered in logical order into slots
// 0..len-1 (free then holds the new slots, lowest on top).
void reserve_rows(lethe_kv::L& L, int kv_dim, int es, int64_t extra) {
  const int64_t need = (int64_t)L.len + extra;
  if (need > (int64_t)L.slot.capacity()) {  // geometric, so one-row appends stay amortized O(1)
    const size_t c = std::max<size_t>((size_t)need, 2 * L.slot.capacity());
    L.slot.reserve(c);
    L.pos.reserve(c);
  }
  if ((int64_t)L.free.size() >= extra) return;
  int64_t cap = std::max<int64_t>(16, L.cap);
  while (cap < need) cap *= 2;
  const size_t rb = (size_t)kv_dim * es;
  std::vector<uint8_t> k((size_t)cap * rb), v((size_t)cap * rb);
  for (int32_t i = 0; i < L.len; i++) {
    memcpy(k.data() + (size_t)i * rb, L.k.data() + (size_t)L.slot[i] * rb, rb);
    memcpy(v.data() + (size_t)i * rb, L.v.data() + (size_t)L.slot[i] * rb, rb);
  }
  L.free.reserve((size_t)cap);  // may throw before any state changed
  L.k.swap(k);
  L.v.swap(v);
  L.cap = cap;
  for (int32_t i = 0; i < L.len; i++) L.slot[i] = i;
  L.free.clear();
  for (int64_t sl = cap - 1; sl >= L.len; sl--) L.free.push_back((int32_t)sl);
}

// Stores n f32 values at element offset `at` of a K or V buffer (rounded to f16 when the cache is f16).
inline void kv_store(std::vector<uint8_t>& dst, bool f16, size_t at, const float* src, size_t n) {
  if (f16) {
    f32_row_to_f16(src, (uint16_t*)dst.data() + at, (int64_t)n);
  } else {
    memcpy((float*)dst.data() + at, src, n * 4);
  }
}

// Keep rows keep[0..n) of L (checked), in order: the dropped rows' slots go to the free list (capacity
// cap >= len, so this cannot throw); kept rows move down in the index arrays only, K/V stay where they are.
void compact_layer(lethe_kv::L& L, const int32_t* keep, int32_t n) {
  int32_t w = 0;
  for (int32_t i = 0; i < L.len; i++) {
    if (w < n && keep[w] == i) {
      L.slot[w++] = L.slot[i];
    } else {
      L.free.push_back(L.slot[i]);
    }
  }
  lethe_abi::compact_positions(L.pos.data(), keep, n);
  L.slot.resize((size_t)n);
  L.pos.resize((size_t)n);
  L.len = n;
}

// A checked prune plan of one cache (lethe_kv_compact's layout), every layer in one pass.
void compact_plan(lethe_kv* kv, const int32_t* keep_len, const int32_t* keep_rows) {
  int64_t o = 0;
  for (size_t l = 0; l < kv->layers.size(); l++) {
    const int32_t n = keep_len[l];
    if (n < 0) continue;
    compact_layer(kv->layers[l], keep_rows + o, n);
    o += n;
  }
}

bool model_ready(const lethe_model* m) {
  if (!m->tok_embd.set()) return fail("model: token embedding not set") == 0;
  if (m->out_norm.empty()) return fail("model: output norm not set") == 0;
  for (size_t l = 0; l < m->layers.size(); l++) {
    const Layer& L = m->layers[l];
    if (L.attn_norm.empty() || L.ffn_norm.empty() || !L.wq.set() || !L.wk.set() || !L.wv.set() ||
        !L.wo.set() || !L.w_gate.set() || !L.w_up.set() || !L.w_down.set()) {
      return fail("model: layer %d is missing a tensor", (int)l) == 0;
    }
  }
  return true;
}

// Attention of the new tokens of one sequence for one KV head group, on one layer.
struct SeqJob {
  lethe_kv* kv;
  int64_t tok0;  // first row in the batch
  int T;  // new tokens
  int len_before;
  float decay;
  int window;  // 0 = no scores
  float* head_scores;  // [n_kv_heads x len_after] or null
};

#ifdef LETHE_AVX2
// out[r*hd + c0 + 8i] = sum_j p_r[j] * V[slot[j]][g*hd + c0 + 8i] for RT heads and NC 8-wide column chunks,
// the accumulators in registers: each V row chunk is loaded (converted) once for all RT heads.
template <bool F16, int RT, int NC>
void pv_tile(const void* V, const int32_t* slot, size_t kvd, size_t col0, const float* p, size_t lim, float* out,
             int hd) {
  __m256 acc[RT][NC];
  for (int r = 0; r < RT; r++)
    for (int i = 0; i < NC; i++) acc[r][i] = _mm256_setzero_ps();
  for (size_t j = 0; j < lim; j++) {
    __m256 v[NC];
    const size_t at = (size_t)slot[j] * kvd + col0;
    for (int i = 0; i < NC; i++) v[i] = load8<F16>(V, at + 8 * i);
    for (int r = 0; r < RT; r++) {
      const __m256 pr = _mm256_set1_ps(p[r * lim + j]);
      for (int i = 0; i < NC; i++) acc[r][i] = _mm256_fmadd_ps(pr, v[i], acc[r][i]);
    }
  }
  for (int r = 0; r < RT; r++)
    for (int i = 0; i < NC; i++) _mm256_storeu_ps(out + (size_t)r * hd + 8 * i, acc[r][i]);
}

template <bool F16, int RT>
void pv_heads(const void* V, const int32_t* slot, size_t kvd, size_t col, const float* p, size_t lim, float* out,
              int hd) {
  int c = 0;
  for (; c + 32 <= hd; c += 32) pv_tile<F16, RT, 4>(V, slot, kvd, col + c, p, lim, out + c, hd);
  switch ((hd - c) / 8) {
    case 3:
      pv_tile<F16, RT, 3>(V, slot, kvd, col + c, p, lim, out + c, hd);
      break;
    case 2:
      pv_tile<F16, RT, 2>(V, slot, kvd, col + c, p, lim, out + c, hd);
      break;
    case 1:
      pv_tile<F16, RT, 1>(V, slot, kvd, col + c, p, lim, out + c, hd);
      break;
  }
}

// Vectorized attention of one KV head group (head_dim a multiple of 8): per query, the scores of 8 cached
// rows at a time for each of the group's heads (the 8-row K block is read from memory once, reused from L1 by
// the other heads; 8 dot products reduced together), a vectorized softmax, then p·V with all heads' outputs
// in registers. K/V are read as f32 or converted from f16 in registers.
template <bool F16>
void attend_group_simd(const lethe_model* m, const lethe_kv::L& L, const SeqJob& J, int g, float* logits) {
  const int hd = m->cfg.head_dim, qd = m->q_dim;
  const size_t kvd = (size_t)m->kv_dim;
  const int nrep = m->cfg.n_heads / m->cfg.n_kv_heads;
  const float scale = 1.0f / std::sqrt((float)hd);
  const __m256 vscale = _mm256_set1_ps(scale);
  const int len_after = J.len_before + J.T;
  float* hs = J.head_scores ? J.head_scores + (size_t)g * len_after : nullptr;
  if (hs) std::fill(hs, hs + len_after, 0.f);
  const void* K = L.k.data();
  const void* V = L.v.data();
  const int32_t* slot = L.slot.data();
  const size_t col = (size_t)g * hd;
  for (int t = 0; t < J.T; t++) {
    const int lim = J.len_before + t + 1;
    const float* qrow = m->q.data() + (J.tok0 + t) * qd + col * nrep;
    float* orow = const_cast<float*>(m->att.data()) + (J.tok0 + t) * qd + col * nrep;
    int j = 0;
    for (; j + 8 <= lim; j += 8) {
      size_t at[8];
      for (int jj = 0; jj < 8; jj++) at[jj] = (size_t)slot[j + jj] * kvd + col;
      for (int r = 0; r < nrep; r++) {
        const float* qr = qrow + r * hd;
        __m256 a[8];
        for (int jj = 0; jj < 8; jj++) a[jj] = _mm256_setzero_ps();
        for (int c = 0; c < hd; c += 8) {
          const __m256 qv = _mm256_loadu_ps(qr + c);
          for (int jj = 0; jj < 8; jj++) {
            a[jj] = _mm256_fmadd_ps(qv, load8<F16>(K, at[jj] + c), a[jj]);
          }
        }
        _mm256_storeu_ps(logits + (size_t)r * lim + j, _mm256_mul_ps(hsum8x8(a), vscale));
      }
    }
    for (; j < lim; j++) {
      const size_t at = (size_t)slot[j] * kvd + col;
      for (int r = 0; r < nrep; r++) {
        __m256 a = _mm256_setzero_ps();
        for (int c = 0; c < hd; c += 8) {
          a = _mm256_fmadd_ps(_mm256_loadu_ps(qrow + r * hd + c), load8<F16>(K, at + c), a);
        }
        logits[(size_t)r * lim + j] = hsum256(a) * scale;
      }
    }
    for (int r = 0; r < nrep; r++) {
      float* p = logits + (size_t)r * lim;
      float mx = p[0];
      for (int i = 1; i < lim; i++) mx = std::max(mx, p[i]);
      const __m256 vmx = _mm256_set1_ps(mx);
      __m256 vs = _mm256_setzero_ps();
      int i = 0;
      for (; i + 8 <= lim; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p + i), vmx));
        _mm256_storeu_ps(p + i, e);
        vs = _mm256_add_ps(vs, e);
      }
      float sum = hsum256(vs);
      for (; i < lim; i++) {
        p[i] = std::exp(p[i] - mx);
        sum += p[i];
      }
      const float inv = 1.f / sum;
      const __m256 vinv = _mm256_set1_ps(inv);
      i = 0;
      for (; i + 8 <= lim; i += 8) _mm256_storeu_ps(p + i, _mm256_mul_ps(_mm256_loadu_ps(p + i), vinv));
      for (; i < lim; i++) p[i] *= inv;
    }
    int r = 0;
    for (; r + 2 <= nrep; r += 2) {
      pv_heads<F16, 2>(V, slot, kvd, col, logits + (size_t)r * lim, lim, orow + r * hd, hd);
    }
    if (r < nrep) pv_heads<F16, 1>(V, slot, kvd, col, logits + (size_t)r * lim, lim, orow + r * hd, hd);
    if (hs && J.T - 1 - t < J.window) {
      const float w = (float)std::pow((double)J.decay, (double)(J.T - 1 - t));
      for (int rr = 0; rr < nrep; rr++) axpy(hs, logits + (size_t)rr * lim, w, lim);
    }
  }
}
#endif

void attend_group(const lethe_model* m, const lethe_kv::L& L, const SeqJob& J, int g, float* logits) {
#ifdef LETHE_AVX2
  if (m->cfg.head_dim % 8 == 0) {
    if (m->kv_f16) {
      attend_group_simd<true>(m, L, J, g, logits);
    } else {
      attend_group_simd<false>(m, L, J, g, logits);
    }
    return;
  }
#endif
  const int hd = m->cfg.head_dim, kvd = m->kv_dim, qd = m->q_dim;
  const int nrep = m->cfg.n_heads / m->cfg.n_kv_heads;
  const float scale = 1.0f / std::sqrt((float)hd);
  const int len_after = J.len_before + J.T;
  float* hs = J.head_scores ? J.head_scores + (size_t)g * len_after : nullptr;
  if (hs) std::fill(hs, hs + len_after, 0.f);
  const bool f16 = m->kv_f16;
  thread_local std::vector<float> rowbuf;
  if ((int)rowbuf.size() < hd) rowbuf.resize(hd);
  float* rb = rowbuf.data();
  for (int t = 0; t < J.T; t++) {
    const int lim = J.len_before + t + 1;
    const float* qrow = m->q.data() + (J.tok0 + t) * qd + (size_t)g * nrep * hd;
    float* orow = const_cast<float*>(m->att.data()) + (J.tok0 + t) * qd + (size_t)g * nrep * hd;
    // logits[r * lim + j]
    for (int j = 0; j < lim; j++) {
      const size_t at = (size_t)L.slot[j] * kvd + (size_t)g * hd;
      const float* kr = f16 ? (f16_row_to_f32((const uint16_t*)L.k.data() + at, rb, hd), rb)
                            : (const float*)L.k.data() + at;
      for (int r = 0; r < nrep; r++) logits[(size_t)r * lim + j] = dot1(qrow + r * hd, kr, hd) * scale;
    }
    for (int r = 0; r < nrep; r++) {
      float* p = logits + (size_t)r * lim;
      float mx = p[0];
      for (int j = 1; j < lim; j++) mx = std::max(mx, p[j]);
      double sum = 0.0;
      for (int j = 0; j < lim; j++) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      const float inv = (float)(1.0 / sum);
      for (int j = 0; j < lim; j++) p[j] *= inv;
    }
    std::fill(orow, orow + (size_t)nrep * hd, 0.f);
    for (int j = 0; j < lim; j++) {
      const size_t at = (size_t)L.slot[j] * kvd + (size_t)g * hd;
      const float* vr = f16 ? (f16_row_to_f32((const uint16_t*)L.v.data() + at, rb, hd), rb)
                            : (const float*)L.v.data() + at;
      for (int r = 0; r < nrep; r++) axpy(orow + r * hd, vr, logits[(size_t)r * lim + j], hd);
    }
    if (hs && J.T - 1 - t < J.window) {
      const float w = (float)std::pow((double)J.decay, (double)(J.T - 1 - t));
      for (int r = 0; r < nrep; r++) axpy(hs, logits + (size_t)r * lim, w, lim);
    }
  }
}

}  // namespace

extern "C" {

int32_t lethe_device_count(void) { return 1; }

int32_t lethe_abi_version(void) { return LETHE_ABI_VERSION; }

const char* lethe_backend_info(void) {
  static std::string info;
  if (info.empty()) {
    info = "cpu";
#ifdef LETHE_AVX2
    info += " avx2+fma";
#else
    info += " scalar";
#endif
#ifdef LETHE_F16C
    info += "+f16c";
#endif
    info += ", openmp max " + std::to_string(omp_get_max_threads()) + " threads";
  }
  return info.c_str();
}

lethe_model* lethe_model_create(const lethe_config* cfg) {
  if (!lethe_abi::check_config(cfg)) return nullptr;
  const lethe_config& c = *cfg;
  lethe_model* m = new (std::nothrow) lethe_model();
  if (!m) return fail("model_create: out of memory"), nullptr;
  m->cfg = c;
  m->par.max_threads = c.max_threads > 0 ? c.max_threads : omp_get_max_threads();
  m->par.parallel_work = c.parallel_work > 0 ? c.parallel_work : kParallelWork;
  m->kv_dim = c.n_kv_heads * c.head_dim;
  m->kv_f16 = c.kv_type == LETHE_KV_F16;
  m->kv_es = m->kv_f16 ? 2 : 4;
  m->q_dim = c.n_heads * c.head_dim;
  m->layers.resize(c.n_layers);
  m->inv_freq.resize(c.head_dim / 2);
  for (int i = 0; i < c.head_dim / 2; i++) {
    m->inv_freq[i] = std::pow((double)c.rope_theta, -(2.0 * i) / (double)c.head_dim);
  }
  return m;
}

void lethe_model_free(lethe_model* m) { delete m; }

int32_t lethe_model_set_tensor(lethe_model* m, int32_t kind, int32_t layer, int32_t type, const void* data,
                               int64_t rows, int64_t cols) {
  if (!m) return fail("lethe_model_set_tensor: model is NULL");
  if (!lethe_abi::check_tensor(m->cfg, kind, layer, type, data, rows, cols, cpu_type_supported)) return 1;
  const bool global = lethe_abi::is_global_kind(kind);
  const bool vec = lethe_abi::is_vector_kind(kind);
  try {
    // To f32 for vectors and BF16 (no BF16 kernel).
    auto to_f32 = [&](std::vector<float>& out) {
      const int64_t n = rows * cols;
      out.resize((size_t)n);
      const size_t rb = row_bytes_of(type, cols);
      for (int64_t r = 0; r < rows; r++) {
        const uint8_t* src = (const uint8_t*)data + (size_t)r * rb;
        float* dst = out.data() + r * cols;
        switch (type) {
          case LETHE_TYPE_F32:
            memcpy(dst, src, (size_t)cols * 4);
            break;
          case LETHE_TYPE_F16:
            f16_row_to_f32((const uint16_t*)src, dst, cols);
            break;
          case LETHE_TYPE_BF16:
            for (int64_t i = 0; i < cols; i++) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
            break;
          case LETHE_TYPE_Q8_0:
            q8_0_row_to_f32(src, dst, cols);
            break;
          case LETHE_TYPE_Q4_0:
            q4_0_row_to_f32(src, dst, cols);
            break;
        }
      }
    };
    if (vec) {
      Layer* L = global ? nullptr : &m->layers[layer];
      std::vector<float>* dst = kind == LETHE_OUT_NORM ? &m->out_norm
                                : kind == LETHE_ATTN_NORM ? &L->attn_norm
                                : kind == LETHE_FFN_NORM  ? &L->ffn_norm
                                : kind == LETHE_BQ        ? &L->bq
                                : kind == LETHE_BK        ? &L->bk
                                                          : &L->bv;
      to_f32(*dst);
      return 0;
    }
    Mat* W = nullptr;
    if (kind == LETHE_TOK_EMBD) W = &m->tok_embd;
    if (kind == LETHE_OUTPUT) W = &m->output;
    if (!global) {
      Layer& L = m->layers[layer];
      W = kind == LETHE_WQ       ? &L.wq
          : kind == LETHE_WK     ? &L.wk
          : kind == LETHE_WV     ? &L.wv
          : kind == LETHE_WO     ? &L.wo
          : kind == LETHE_W_GATE ? &L.w_gate
          : kind == LETHE_W_UP   ? &L.w_up
                                 : &L.w_down;
    }
    W->rows = rows;
    W->cols = cols;
    if (type == LETHE_TYPE_BF16) {
      std::vector<float> f;
      to_f32(f);
      W->type = LETHE_TYPE_F32;
      W->row_bytes = (size_t)cols * 4;
      W->data.assign((const uint8_t*)f.data(), (const uint8_t*)f.data() + f.size() * 4);
    } else {
      W->type = type;
      W->row_bytes = row_bytes_of(type, cols);
      W->data.assign((const uint8_t*)data, (const uint8_t*)data + W->row_bytes * (size_t)rows);
    }
  } catch (const std::bad_alloc&) {
    return fail("set_tensor: out of memory");
  }
  return 0;
}

lethe_kv* lethe_kv_create(lethe_model* m) {
  if (!m) return fail("kv_create: null model"), nullptr;
  lethe_kv* kv = new (std::nothrow) lethe_kv();
  if (!kv) return fail("kv_create: out of memory"), nullptr;
  kv->m = m;
  kv->layers.resize(m->cfg.n_layers);
  return kv;
}

void lethe_kv_free(lethe_kv* kv) { delete kv; }

}  // extern "C"

const lethe_model* lethe_kv_model(const lethe_kv* kv) { return kv->m; }

extern "C" {

int32_t lethe_kv_len(lethe_kv* kv, int32_t layer) {
  if (!lethe_abi::check_kv_layer(kv, layer, kv ? (int32_t)kv->layers.size() : 0, "lethe_kv_len")) return -1;
  return kv->layers[layer].len;
}

int32_t lethe_kv_compact(lethe_kv* kv, const int32_t* keep_len, const int32_t* keep_rows) {
  if (!kv) return fail("lethe_kv_compact: kv is NULL");
  const int32_t nl = (int32_t)kv->layers.size();
  if (!keep_len) return fail("lethe_kv_compact: keep_len is NULL");
  if (!lethe_abi::check_plans(1, &kv, nl, keep_len, keep_rows, "lethe_kv_compact")) return 1;
  compact_plan(kv, keep_len, keep_rows);
  return 0;
}

int32_t lethe_kv_read(lethe_kv* kv, int32_t layer, float* k, float* v, int32_t* pos) {
  if (!lethe_abi::check_kv_layer(kv, layer, kv ? (int32_t)kv->layers.size() : 0, "lethe_kv_read")) return 1;
  const lethe_kv::L& L = kv->layers[layer];
  const size_t d = (size_t)kv->m->kv_dim;
  for (int32_t i = 0; i < L.len; i++) {  // logical order
    const size_t at = (size_t)L.slot[i] * d;
    if (kv->m->kv_f16) {
      if (k) f16_row_to_f32((const uint16_t*)L.k.data() + at, k + i * d, (int64_t)d);
      if (v) f16_row_to_f32((const uint16_t*)L.v.data() + at, v + i * d, (int64_t)d);
    } else {
      if (k) memcpy(k + i * d, (const float*)L.k.data() + at, d * 4);
      if (v) memcpy(v + i * d, (const float*)L.v.data() + at, d * 4);
    }
  }
  if (pos && L.len) memcpy(pos, L.pos.data(), (size_t)L.len * 4);
  return 0;
}

int32_t lethe_kv_write(lethe_kv* kv, int32_t layer, const float* k, const float* v, const int32_t* pos,
                       int32_t n) {
  if (!lethe_abi::check_kv_layer(kv, layer, kv ? (int32_t)kv->layers.size() : 0, "lethe_kv_write")) return 1;
  if (!lethe_abi::check_rows(n, k, v, pos, "lethe_kv_write")) return 1;
  lethe_kv::L& L = kv->layers[layer];
  const size_t d = (size_t)kv->m->kv_dim;
  try {
    // Empty the layer (every slot free), then reserve: rows go to slots 0..n-1 in order.
    L.slot.clear();
    L.pos.clear();
    L.free.clear();
    L.len = 0;
    L.free.reserve((size_t)L.cap);
    for (int64_t sl = L.cap - 1; sl >= 0; sl--) L.free.push_back((int32_t)sl);
    reserve_rows(L, (int)d, kv->m->kv_es, n);
  } catch (const std::bad_alloc&) {
    return fail("lethe_kv_write: out of memory");
  }
  for (int32_t i = 0; i < n; i++) {
    const int32_t sl = L.free.back();
    L.free.pop_back();
    kv_store(L.k, kv->m->kv_f16, (size_t)sl * d, k + (size_t)i * d, d);
    kv_store(L.v, kv->m->kv_f16, (size_t)sl * d, v + (size_t)i * d, d);
    L.slot.push_back(sl);
    L.pos.push_back(pos[i]);
  }
  L.len = n;
  return 0;
}

int64_t lethe_kv_bytes(lethe_kv* kv) {
  if (!kv) return 0;
  int64_t rows = 0;
  for (const auto& L : kv->layers) rows += L.len;
  return rows * kv->m->kv_dim * 2 * kv->m->kv_es;
}

int32_t lethe_forward(lethe_model* m, int32_t n_seq, lethe_kv** kvs, const int32_t* keep_len,
                      const int32_t* keep_rows, const int32_t* tokens, const int32_t* n_tokens,
                      const int32_t* start_pos, const int32_t* logits_mode, float* logits_out,
                      const float* score_decay, const int32_t* score_window, float** scores_out) {
  int64_t N = 0, n_logits = 0;
  if (!m) return fail("lethe_forward: model is NULL");
  if (!lethe_abi::check_forward(m, m->cfg, n_seq, kvs, keep_len, keep_rows, tokens, n_tokens, start_pos,
                                logits_mode, logits_out, score_decay, score_window, &N, &n_logits)) {
    return 1;
  }
  if (!model_ready(m)) return 1;
  const lethe_config& c = m->cfg;
  const int dim = c.dim, qd = m->q_dim, kvd = m->kv_dim, hd = c.head_dim, ffn = c.ffn_dim, V = c.vocab_size;
  const int NL = c.n_layers;
  const bool want_scores = score_decay && score_window && scores_out;

  try {
    ensure(m->x, N * dim);
    ensure(m->xb, N * std::max(dim, qd));
    ensure(m->q, N * qd);
    ensure(m->k, N * kvd);
    ensure(m->v, N * kvd);
    ensure(m->att, N * qd);
    ensure(m->hb, N * ffn);
    ensure(m->hb2, N * ffn);
    ensure(m->rope_cs, N * hd);
    for (int s = 0; s < n_seq; s++) {
      for (auto& L : kvs[s]->layers) reserve_rows(L, kvd, m->kv_es, n_tokens[s]);
    }
  } catch (const std::bad_alloc&) {
    return fail("forward: out of memory");
  }

  // The step's prune plans, before anything is appended: a rewrite of each layer's slot index (no K/V moves).
  if (keep_len) {
    int64_t o = 0;
    for (int s = 0; s < n_seq; s++) {
      compact_plan(kvs[s], keep_len + (int64_t)s * NL, keep_rows ? keep_rows + o : nullptr);
      for (int l = 0; l < NL; l++) o += std::max(0, keep_len[(int64_t)s * NL + l]);
    }
  }

  float* x = m->x.data();
  float* xb = m->xb.data();
  // Embeddings and RoPE tables (cos, sin per token and frequency).
  {
    thread_local std::vector<float> buf;
    ensure(buf, dim);
    int64_t i = 0;
    for (int s = 0; s < n_seq; s++) {
      for (int t = 0; t < n_tokens[s]; t++, i++) {
        const float* row = row_f32(m->tok_embd, tokens[i], buf.data());
        memcpy(x + i * dim, row, (size_t)dim * 4);
        const double p = (double)start_pos[s] + t;
        float* cs = m->rope_cs.data() + i * hd;
        for (int f = 0; f < hd / 2; f++) {
          const double a = p * m->inv_freq[f];
          cs[2 * f] = (float)std::cos(a);
          cs[2 * f + 1] = (float)std::sin(a);
        }
      }
    }
  }
  auto rope = [&](float* vec, int nheads, const float* cs) {
    const int half = hd / 2;
    for (int h = 0; h < nheads; h++) {
      float* o = vec + h * hd;
      for (int f = 0; f < half; f++) {
        const int i0 = c.rope_style == LETHE_ROPE_INTERLEAVED ? 2 * f : f;
        const int i1 = c.rope_style == LETHE_ROPE_INTERLEAVED ? i0 + 1 : i0 + half;
        const float x0 = o[i0], x1 = o[i1], co = cs[2 * f], si = cs[2 * f + 1];
        o[i0] = x0 * co - x1 * si;
        o[i1] = x0 * si + x1 * co;
      }
    }
  };

  // Sequence jobs and attention scratch.
  std::vector<SeqJob> jobs(n_seq);
  size_t max_lim = 0, hs_total = 0;
  {
    int64_t tok0 = 0;
    for (int s = 0; s < n_seq; s++) {
      jobs[s].kv = kvs[s];
      jobs[s].tok0 = tok0;
      jobs[s].T = n_tokens[s];
      jobs[s].decay = want_scores ? score_decay[s] : 0.f;
      jobs[s].window = want_scores ? score_window[s] : 0;
      tok0 += n_tokens[s];
      for (const auto& L : kvs[s]->layers) max_lim = std::max(max_lim, (size_t)L.len + n_tokens[s]);
      if (jobs[s].window > 0) {
        size_t mx = 0;
        for (const auto& L : kvs[s]->layers) mx = std::max(mx, (size_t)L.len + n_tokens[s]);
        hs_total += mx * c.n_kv_heads;
      }
    }
  }
  try {
    ensure(m->head_scores, hs_total);
  } catch (const std::bad_alloc&) {
    return fail("forward: out of memory");
  }
  const int nrep = c.n_heads / c.n_kv_heads;

  for (int l = 0; l < NL; l++) {
    const Layer& W = m->layers[l];
    for (int64_t i = 0; i < N; i++) rmsnorm(xb + i * dim, x + i * dim, W.attn_norm.data(), dim, c.norm_eps);
    {
      const MatOut qkv[3] = {{&W.wq, m->q.data()}, {&W.wk, m->k.data()}, {&W.wv, m->v.data()}};
      matmul_multi(m->par, qkv, 3, xb, N);
    }
    for (int64_t i = 0; i < N; i++) {
      if (!W.bq.empty()) axpy(m->q.data() + i * qd, W.bq.data(), 1.f, qd);
      if (!W.bk.empty()) axpy(m->k.data() + i * kvd, W.bk.data(), 1.f, kvd);
      if (!W.bv.empty()) axpy(m->v.data() + i * kvd, W.bv.data(), 1.f, kvd);
      const float* cs = m->rope_cs.data() + i * hd;
      rope(m->q.data() + i * qd, c.n_heads, cs);
      rope(m->k.data() + i * kvd, c.n_kv_heads, cs);
    }
    // Append this step's K/V rows to each sequence's layer cache.
    size_t hs_off = 0;
    double work = 0;
    for (int s = 0; s < n_seq; s++) {
      SeqJob& J = jobs[s];
      lethe_kv::L& L = kvs[s]->layers[l];
      J.len_before = L.len;
      for (int t = 0; t < J.T; t++) {  // reserved above: a free slot each, no reallocation
        const int32_t sl = L.free.back();
        L.free.pop_back();
        kv_store(L.k, m->kv_f16, (size_t)sl * kvd, m->k.data() + (J.tok0 + t) * kvd, kvd);
        kv_store(L.v, m->kv_f16, (size_t)sl * kvd, m->v.data() + (J.tok0 + t) * kvd, kvd);
        L.slot.push_back(sl);
        L.pos.push_back(start_pos[s] + t);
      }
      L.len += J.T;
      J.head_scores = nullptr;
      if (J.window > 0) {
        J.head_scores = m->head_scores.data() + hs_off;
        hs_off += (size_t)L.len * c.n_kv_heads;
      }
      work += (double)J.T * L.len * c.n_heads * hd * 2;
    }
    // Attention: one task per (sequence, kv head).
    const int64_t ntask = (int64_t)n_seq * c.n_kv_heads;
    const int nt = threads_for(m->par, work, ntask);
    auto run_task = [&](int64_t task, std::vector<float>& lg) {
      const int s = (int)(task / c.n_kv_heads), g = (int)(task % c.n_kv_heads);
      ensure(lg, max_lim * nrep);
      attend_group(m, kvs[s]->layers[l], jobs[s], g, lg.data());
    };
    if (nt <= 1) {
      thread_local std::vector<float> lg;
      for (int64_t task = 0; task < ntask; task++) run_task(task, lg);
    } else {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
      for (int64_t task = 0; task < ntask; task++) {
        thread_local std::vector<float> lg;
        run_task(task, lg);
      }
    }
    // Scores: sum the per-kv-head sums.
    for (int s = 0; s < n_seq; s++) {
      const SeqJob& J = jobs[s];
      float* out = J.window > 0 ? scores_out[(size_t)s * NL + l] : nullptr;
      if (!out) continue;
      const int len = kvs[s]->layers[l].len;
      memcpy(out, J.head_scores, (size_t)len * 4);
      for (int g = 1; g < c.n_kv_heads; g++) axpy(out, J.head_scores + (size_t)g * len, 1.f, len);
    }
    // Output projection and residual.
    matmul(m->par, W.wo, m->att.data(), N, xb);
    for (int64_t i = 0; i < N * dim; i++) x[i] += xb[i];
    // SwiGLU FFN.
    for (int64_t i = 0; i < N; i++) rmsnorm(xb + i * dim, x + i * dim, W.ffn_norm.data(), dim, c.norm_eps);
    {
      const MatOut gate_up[2] = {{&W.w_gate, m->hb.data()}, {&W.w_up, m->hb2.data()}};
      matmul_multi(m->par, gate_up, 2, xb, N);
    }
    {
      float* g = m->hb.data();
      const float* u = m->hb2.data();
      for (int64_t i = 0; i < N * ffn; i++) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
    matmul(m->par, W.w_down, m->hb.data(), N, xb);
    for (int64_t i = 0; i < N * dim; i++) x[i] += xb[i];
  }

  if (n_logits > 0) {
    try {
      ensure(m->lx, n_logits * dim);
    } catch (const std::bad_alloc&) {
      return fail("forward: out of memory");
    }
    int64_t r = 0;
    for (int s = 0; s < n_seq; s++) {
      const SeqJob& J = jobs[s];
      if (logits_mode[s] == 0) continue;
      const int t0 = logits_mode[s] == 2 ? 0 : J.T - 1;
      for (int t = t0; t < J.T; t++, r++) {
        rmsnorm(m->lx.data() + r * dim, x + (J.tok0 + t) * dim, m->out_norm.data(), dim, c.norm_eps);
      }
    }
    const Mat& out = m->output.set() ? m->output : m->tok_embd;
    matmul(m->par, out, m->lx.data(), n_logits, logits_out);
    (void)V;
  }
  return 0;
}

}  // extern "C"
