// CUDA kernels of the Lethe native backend (liblethe_cuda.so). Written to be simple and obviously correct,
// mirroring the math of the TypeScript reference (src/engine/ts/backend.ts) and the CPU library:
//   one thread block per output row (matmul, norms, attention head), block-wide reductions built from warp
//   shuffles, f32 activations everywhere, weights dequantized element by element inside the matmul.
// Every kernel assumes blockDim.x is a multiple of 32 (full warps) and at most 1024.
#pragma once

#ifdef LETHE_EMU
#include "emu/cuda_emu.h"  // host emulation of the CUDA subset used here (tests without a GPU)
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif
#include <stdint.h>

// Kernel launch: `LAUNCH(kernel, grid, block, smem, stream, args...)`.
#ifdef LETHE_EMU
#define LAUNCH(kernel, grid, block, smem, stream, ...) \
  (emu::counts[#kernel]++, emu::launch(dim3(grid), dim3(block), [&] { kernel(__VA_ARGS__); }))
#else
#define LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace lethe_cuda {

// ggml type ids (the GGUF ids, as in lethe.h).
constexpr int T_F32 = 0;
constexpr int T_F16 = 1;
constexpr int T_Q4_0 = 2;
constexpr int T_Q8_0 = 8;
constexpr int T_BF16 = 30;

constexpr int QK = 32;          // elements per Q4_0 / Q8_0 block
constexpr int Q8_0_BYTES = 34;  // f16 scale + 32 x int8
constexpr int Q4_0_BYTES = 18;  // f16 scale + 16 bytes of nibbles (low nibbles = elements 0..15)

#ifndef LETHE_BLOCK_OVERRIDE
constexpr int MATMUL_THREADS = 128;
constexpr int ROW_THREADS = 256;
constexpr int ATTN_THREADS = 128;
#else  // smaller blocks for the host emulator (any multiple of 32 is valid)
constexpr int MATMUL_THREADS = LETHE_BLOCK_OVERRIDE;
constexpr int ROW_THREADS = LETHE_BLOCK_OVERRIDE;
constexpr int ATTN_THREADS = LETHE_BLOCK_OVERRIDE;
#endif
constexpr int MATMUL_TILE = 8;     // activation rows per matmul block (weights read once per tile)
constexpr int MAX_HEAD_DIM = 1024;  // the attention kernel keeps the query in shared memory

// ---------------------------------------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, off));
  return v;
}

// Block-wide sum; every thread gets the result. `sh` is 32 floats of shared memory. The leading
// __syncthreads protects `sh` from readers of a previous reduction.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  float r = 0.f;
  for (int w = 0; w < nw; ++w) r += sh[w];
  return r;
}

__device__ __forceinline__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  float r = -INFINITY;
  for (int w = 0; w < nw; ++w) r = fmaxf(r, sh[w]);
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// Weight element access: element i of a row of `TYPE`-encoded values starting at `row`.

__device__ __forceinline__ float f16_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(p)));
}

template <int TYPE>
__device__ __forceinline__ float wload(const uint8_t* row, int64_t i);

template <>
__device__ __forceinline__ float wload<T_F32>(const uint8_t* row, int64_t i) {
  return reinterpret_cast<const float*>(row)[i];
}

template <>
__device__ __forceinline__ float wload<T_F16>(const uint8_t* row, int64_t i) {
  return f16_at(row + 2 * i);
}

template <>
__device__ __forceinline__ float wload<T_BF16>(const uint8_t* row, int64_t i) {
  const unsigned short b = reinterpret_cast<const unsigned short*>(row)[i];
  return __uint_as_float(((unsigned int)b) << 16);
}

template <>
__device__ __forceinline__ float wload<T_Q8_0>(const uint8_t* row, int64_t i) {
  const uint8_t* blk = row + (i / QK) * Q8_0_BYTES;  // blocks start at even offsets: the f16 load is aligned
  const int j = (int)(i % QK);
  const int8_t q = reinterpret_cast<const int8_t*>(blk + 2)[j];
  return (float)q * f16_at(blk);
}

template <>
__device__ __forceinline__ float wload<T_Q4_0>(const uint8_t* row, int64_t i) {
  const uint8_t* blk = row + (i / QK) * Q4_0_BYTES;
  const int j = (int)(i % QK);
  const uint8_t b = blk[2 + (j % (QK / 2))];
  const int nib = j < QK / 2 ? (b & 0x0f) : (b >> 4);
  return (float)(nib - 8) * f16_at(blk);
}

// ---------------------------------------------------------------------------------------------------------
// Batched matmul: y[t, o] (+)= Σ_i W[o, i] · x[t, i] (+ bias[o]) for t < n, o < out.
// grid = (out, ceil(n / TILE)), block = MATMUL_THREADS. Each block reads its weight row once for TILE
// activation rows; each thread keeps TILE partial sums.

template <int TYPE>
__global__ void matmul_kernel(const uint8_t* __restrict__ W, int64_t rowBytes, int in, int out,
                              const float* __restrict__ x, int n, float* y, const float* __restrict__ bias,
                              int accumulate) {
  const int o = blockIdx.x;
  const int t0 = blockIdx.y * MATMUL_TILE;
  if (o >= out || t0 >= n) return;  // uniform per block
  const int nt = min(MATMUL_TILE, n - t0);
  const uint8_t* row = W + (int64_t)o * rowBytes;
  const float* xt = x + (int64_t)t0 * in;
  float acc[MATMUL_TILE];
#pragma unroll
  for (int t = 0; t < MATMUL_TILE; ++t) acc[t] = 0.f;
  for (int i = threadIdx.x; i < in; i += blockDim.x) {
    const float w = wload<TYPE>(row, i);
#pragma unroll
    for (int t = 0; t < MATMUL_TILE; ++t) {
      if (t < nt) acc[t] += w * xt[(int64_t)t * in + i];
    }
  }
  __shared__ float red[MATMUL_TILE][32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int t = 0; t < MATMUL_TILE; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0) red[t][wid] = v;
  }
  __syncthreads();
  if ((int)threadIdx.x < nt) {
    const int t = threadIdx.x;
    float s = 0.f;
    for (int w = 0; w < nw; ++w) s += red[t][w];
    if (bias) s += bias[o];
    const int64_t idx = (int64_t)(t0 + t) * out + o;
    y[idx] = accumulate ? y[idx] + s : s;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Embedding: x[r, :] = dequant(E[tokens[r], :]). grid = n, block = ROW_THREADS. Token ids are validated on
// the host before launch.

template <int TYPE>
__global__ void embed_kernel(const uint8_t* __restrict__ E, int64_t rowBytes, int dim,
                             const int32_t* __restrict__ tokens, int n, float* __restrict__ x) {
  const int r = blockIdx.x;
  if (r >= n) return;
  const uint8_t* row = E + (int64_t)tokens[r] * rowBytes;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) x[(int64_t)r * dim + i] = wload<TYPE>(row, i);
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm: y[r, :] = x[r, :] · 1/sqrt(mean(x[r, :]²) + eps) · w. grid = n, block = ROW_THREADS.
// The sum of squares is accumulated in double like the CPU library.

__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                               int dim, float eps, int n) {
  const int r = blockIdx.x;
  if (r >= n) return;
  __shared__ float sh[32];
  const float* xr = x + (int64_t)r * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  const float scale = (float)(1.0 / sqrt((double)ss / (double)dim + (double)eps));
  float* yr = y + (int64_t)r * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}

// ---------------------------------------------------------------------------------------------------------
// Bias add for [n × d] rows: x[r, i] += b[i]. grid = n, block = ROW_THREADS.
__global__ void add_bias_kernel(float* __restrict__ x, const float* __restrict__ b, int d, int n) {
  const int r = blockIdx.x;
  if (r >= n) return;
  for (int i = threadIdx.x; i < d; i += blockDim.x) x[(int64_t)r * d + i] += b[i];
}

// ---------------------------------------------------------------------------------------------------------
// RoPE on q [n × nHeads·hd] and k [n × nKV·hd] for each row's position (angles in double, like the TS
// reference: freq_i = theta^(-2i/hd), angle = pos · freq_i). grid = n, block = ROW_THREADS; one thread per
// rotated pair. style 0 = interleaved pairs (2i, 2i+1), 1 = half pairs (i, i + hd/2).

__global__ void rope_kernel(float* __restrict__ q, float* __restrict__ k, const int32_t* __restrict__ pos,
                            int nHeads, int nKV, int hd, double theta, int style, int n) {
  const int r = blockIdx.x;
  if (r >= n) return;
  const int half = hd / 2;
  const int qPairs = nHeads * half;
  const int total = (nHeads + nKV) * half;
  const double p = (double)pos[r];
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    float* base;
    int pr;
    if (e < qPairs) {
      base = q + (int64_t)r * nHeads * hd;
      pr = e;
    } else {
      base = k + (int64_t)r * nKV * hd;
      pr = e - qPairs;
    }
    const int h = pr / half, i = pr % half;
    const double a = p * pow(theta, -(double)(2 * i) / (double)hd);
    const float c = (float)cos(a), s = (float)sin(a);
    const int i0 = style == 0 ? h * hd + 2 * i : h * hd + i;
    const int i1 = style == 0 ? i0 + 1 : i0 + half;
    const float x0 = base[i0], x1 = base[i1];
    base[i0] = x0 * c - x1 * s;
    base[i1] = x0 * s + x1 * c;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Per (layer, row) attention metadata, built on the host for every forward. The K/V pointers address rows of
// the cache's element type (float, or __half for LETHE_KV_F16); the kernels are instantiated for both.
struct RowMeta {
  void* kdst;           // where this row's K goes in its sequence's layer cache
  void* vdst;           // where this row's V goes
  const void* kbase;    // the sequence's layer K rows (row j at kbase + j·kvDim elements)
  const void* vbase;    // the sequence's layer V rows
  int64_t attOff;       // offset of this row's [nHeads × nvis] probabilities in the chunk's scratch
  int32_t nvis;         // rows visible to this query: cached-before-step + own index within step + 1
  int32_t pad;
};

// Per (layer, sequence asking for scores) job.
struct ScoreJob {
  int32_t firstRow;  // first batch row of the sequence
  int32_t nRows;     // T: the sequence's new tokens
  int32_t len;       // layer length after the append (= nvis of the sequence's last row)
  int32_t pad;
  int64_t outOff;    // offset of the len scores in the output buffer
};

// KV cache elements: f32 rows, or IEEE-half rows (stored rounded to nearest even with __float2half_rn, exactly
// JS Math.f16round; read back exactly with __half2float, arithmetic stays f32).
__device__ __forceinline__ float kv_load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float kv_load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void kv_store(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void kv_store(__half* p, int64_t i, float x) { p[i] = __float2half_rn(x); }

// Append the step's K/V rows (f32 from the projections) to the caches of element type KV. grid = n,
// block = ROW_THREADS.
template <typename KV>
__global__ void kv_append_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                 const RowMeta* __restrict__ meta, int kvDim, int n) {
  const int r = blockIdx.x;
  if (r >= n) return;
  const RowMeta m = meta[r];
  KV* kd = static_cast<KV*>(m.kdst);
  KV* vd = static_cast<KV*>(m.vdst);
  for (int i = threadIdx.x; i < kvDim; i += blockDim.x) {
    kv_store(kd, i, k[(int64_t)r * kvDim + i]);
    kv_store(vd, i, v[(int64_t)r * kvDim + i]);
  }
}

// GQA attention for rows [r0, r0 + gridDim.x) and every query head (blockIdx.y):
//   p_j = softmax_j(q·K_j / sqrt(hd)) over the row's nvis visible cache rows (causal inside the step),
//   out = Σ_j p_j V_j.
// The probabilities stay in `att` (chunk scratch) for the score kernel. block = ATTN_THREADS; hd <= MAX_HEAD_DIM.
// KV is the cache element type (float or __half); products and sums are f32 either way.
template <typename KV>
__global__ void attention_kernel(const float* __restrict__ q, const RowMeta* __restrict__ meta, float* att,
                                 float* __restrict__ out, int r0, int nHeads, int nKV, int hd) {
  __shared__ float qs[MAX_HEAD_DIM];
  __shared__ float sh[32];
  const int r = r0 + blockIdx.x;
  const int h = blockIdx.y;
  const RowMeta m = meta[r];
  const int group = nHeads / nKV;
  const int kvh = h / group;
  const int kvDim = nKV * hd;
  const int qDim = nHeads * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[(int64_t)r * qDim + (int64_t)h * hd + d];
  __syncthreads();
  const int nvis = m.nvis;
  float* p = att + m.attOff + (int64_t)h * nvis;
  const float invSqrt = (float)(1.0 / sqrt((double)hd));
  const KV* kbase = static_cast<const KV*>(m.kbase);
  const KV* vbase = static_cast<const KV*>(m.vbase);
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < nvis; j += blockDim.x) {
    const KV* kr = kbase + (int64_t)j * kvDim + (int64_t)kvh * hd;
    float s = 0.f;
    for (int d = 0; d < hd; ++d) s += qs[d] * kv_load(kr, d);
    s *= invSqrt;
    p[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_max(mx, sh);
  float sum = 0.f;
  for (int j = threadIdx.x; j < nvis; j += blockDim.x) {
    const float e = expf(p[j] - mx);
    p[j] = e;
    sum += e;
  }
  sum = block_sum(sum, sh);
  const float inv = 1.f / sum;
  for (int j = threadIdx.x; j < nvis; j += blockDim.x) p[j] *= inv;
  __syncthreads();  // every p_j written by its owner thread is visible to the whole block
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    const KV* vc = vbase + (int64_t)kvh * hd + d;
    float o = 0.f;
    for (int j = 0; j < nvis; ++j) o += p[j] * kv_load(vc, (int64_t)j * kvDim);
    out[(int64_t)r * qDim + (int64_t)h * hd + d] = o;
  }
}

// Scores for the attention chunk of rows [r0, r1): for each job (blockIdx.x) and cached row j < len,
//   out[j] += Σ_{rows r of the job in the chunk} w[r] · Σ_h p_{r,h}(j)     (p = 0 where j >= nvis(r)).
// Chunks run in order on one stream, so the accumulation order is fixed. block = ROW_THREADS.
__global__ void scores_kernel(const float* __restrict__ att, const RowMeta* __restrict__ meta,
                              const ScoreJob* __restrict__ jobs, const float* __restrict__ rowW,
                              float* __restrict__ outBuf, int r0, int r1, int nHeads) {
  const ScoreJob jb = jobs[blockIdx.x];
  const int lo = max(r0, jb.firstRow), hi = min(r1, jb.firstRow + jb.nRows);
  if (lo >= hi) return;
  float* o = outBuf + jb.outOff;
  for (int j = threadIdx.x; j < jb.len; j += blockDim.x) {
    float acc = 0.f;
    for (int r = lo; r < hi; ++r) {
      const float w = rowW[r];
      const RowMeta m = meta[r];
      if (w == 0.f || j >= m.nvis) continue;
      const float* p = att + m.attOff;
      float hs = 0.f;
      for (int h = 0; h < nHeads; ++h) hs += p[(int64_t)h * m.nvis + j];
      acc += w * hs;
    }
    o[j] += acc;
  }
}

// ---------------------------------------------------------------------------------------------------------
// SwiGLU: g[i] = silu(g[i]) · u[i] over count elements. 1-D grid.
__global__ void swiglu_kernel(float* __restrict__ g, const float* __restrict__ u, int64_t count) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float x = g[i];
  g[i] = (x / (1.f + expf(-x))) * u[i];
}

// One layer's part of a prune plan, compacted in place by kv_compact_kernel.
struct CompactJob {
  uint32_t* k;       // the layer's K rows, as 32-bit words
  uint32_t* v;       // its V rows
  int64_t keepOff;   // its keep list in the step's keep array
  int32_t n;         // rows kept
  int32_t from;      // the first kept row that moves (rows before it stay where they are)
  int32_t words;     // 32-bit words per row (kvDim for f32 rows, kvDim / 2 for f16)
  int32_t pad;
};

// In-place compaction of every layer of every sequence of a step in one launch: grid.x = 2 × jobs (job
// blockIdx.x / 2, its K rows for even x, V rows for odd), grid.y × blockDim.x threads over a row's words. For
// i = from … n-1 in ascending order row i becomes row keep[i]; keep is strictly ascending, so keep[i] >= i and a
// row is read before any write can reach it. A thread owns its word columns of every row: no two threads touch
// the same word, no barrier needed.
__global__ void kv_compact_kernel(const CompactJob* __restrict__ jobs, const int32_t* __restrict__ keep) {
  const CompactJob J = jobs[blockIdx.x >> 1];
  uint32_t* rows = (blockIdx.x & 1) ? J.v : J.k;
  const int32_t* kp = keep + J.keepOff;
  for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < J.words; c += gridDim.y * blockDim.x) {
    for (int i = J.from; i < J.n; i++) rows[(int64_t)i * J.words + c] = rows[(int64_t)kp[i] * J.words + c];
  }
}

// Gather rows of d elements of T: dst[i, :] = src[idx[i], :]. grid = n, block = ROW_THREADS. T = float for
// activations and f32 KV rows, unsigned short to move f16 KV rows bit for bit.
template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ src, const int32_t* __restrict__ idx,
                                   T* __restrict__ dst, int d, int n) {
  const int i = blockIdx.x;
  if (i >= n) return;
  const T* s = src + (int64_t)idx[i] * d;
  for (int c = threadIdx.x; c < d; c += blockDim.x) dst[(int64_t)i * d + c] = s[c];
}

}  // namespace lethe_cuda
