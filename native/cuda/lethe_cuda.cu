// liblethe_cuda.so: the lethe.h C ABI implemented with CUDA kernels (kernels.cuh).
//
// - Weights live on the device in their file encoding (F32, F16, BF16, Q8_0, Q4_0; dequantized inside the
//   kernels); norms and biases are converted to f32 on upload.
// - Each sequence's KV cache lives on the device: per layer one K and one V buffer of `cap` rows of
//   nKV·headDim elements (grown by doubling), plus the rows' original positions in host memory. Elements are
//   f32, or IEEE half with lethe_config.kv_type = LETHE_KV_F16: rows are rounded to nearest even
//   (__float2half_rn, exactly JS Math.f16round) when appended by the forward or written by lethe_kv_write,
//   attention converts them back to f32 in registers, lethe_kv_read returns them as f32 (exactly the halves)
//   and lethe_kv_bytes counts 2 bytes per element.
// - lethe_forward applies the step's prune plans first (every layer of every sequence compacted in place by one
//   kv_compact_kernel launch, no allocation), runs every sequence's new tokens as one [N × dim] batch through
//   the matmuls (each weight row is read once per 8 activation rows), attention per sequence over its own
//   cache, and synchronises with the host once: a single device→host copy of the logits and scores at the end.
// - Argument validation, limits and the last error are shared with the CPU library (native/common/abi.cpp).
// - Every CUDA call is checked; failures set lethe_last_error and return an error code / NULL.
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../f16.h"

#include <algorithm>
#include <new>
#include <string>
#include <vector>

#include "../common/abi.h"
#include "../lethe.h"
#include "kernels.cuh"

using namespace lethe_cuda;

// ---------------------------------------------------------------------------------------------------------
// Errors

// Sets lethe_last_error (native/common/abi.cpp).
static void set_error(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  lethe_abi::fail("%s", buf);
}

static bool cuda_ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  set_error("cuda: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
  return false;
}

#define CK(call)                             \
  do {                                       \
    if (!cuda_ok((call), #call)) return false; \
  } while (0)

// Checks a kernel launch (configuration errors surface here; execution errors at the final synchronize).
#define CK_LAUNCH(name)                                    \
  do {                                                     \
    if (!cuda_ok(cudaGetLastError(), name " launch")) return false; \
  } while (0)

// ---------------------------------------------------------------------------------------------------------
// Host-side conversions (vectors only: norms and biases become f32 on upload)


static uint16_t host_u16(const uint8_t* p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

static void host_to_f32(int type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case T_F32:
      memcpy(dst, src, (size_t)n * 4);
      break;
    case T_F16:
      for (int64_t i = 0; i < n; i++) dst[i] = lethe_f16_to_f32(host_u16(src + 2 * i));
      break;
    case T_BF16:
      for (int64_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)host_u16(src + 2 * i) << 16;
        memcpy(&dst[i], &bits, 4);
      }
      break;
    case T_Q8_0:
      for (int64_t b = 0; b < n / QK; b++) {
        const uint8_t* blk = src + b * Q8_0_BYTES;
        const float d = lethe_f16_to_f32(host_u16(blk));
        for (int j = 0; j < QK; j++) dst[b * QK + j] = (float)((const int8_t*)(blk + 2))[j] * d;
      }
      break;
    case T_Q4_0:
      for (int64_t b = 0; b < n / QK; b++) {
        const uint8_t* blk = src + b * Q4_0_BYTES;
        const float d = lethe_f16_to_f32(host_u16(blk));
        for (int j = 0; j < QK / 2; j++) {
          dst[b * QK + j] = (float)((int)(blk[2 + j] & 0x0f) - 8) * d;
          dst[b * QK + j + QK / 2] = (float)((int)(blk[2 + j] >> 4) - 8) * d;
        }
      }
      break;
  }
}

// Bytes of one row of `cols` elements of `type`; -1 for an unsupported type or a bad quantized width.
static int64_t row_bytes(int type, int64_t cols) {
  switch (type) {
    case T_F32:
      return cols * 4;
    case T_F16:
    case T_BF16:
      return cols * 2;
    case T_Q8_0:
      return cols % QK == 0 ? cols / QK * Q8_0_BYTES : -1;
    case T_Q4_0:
      return cols % QK == 0 ? cols / QK * Q4_0_BYTES : -1;
    default:
      return -1;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Device memory

struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
};

// Grows `b` to at least `bytes` (contents are not kept).
static bool ensure(DevBuf& b, size_t bytes, const char* what) {
  if (bytes <= b.bytes) return true;
  size_t want = std::max(bytes, b.bytes + b.bytes / 2);
  if (b.p) {
    if (!cuda_ok(cudaFree(b.p), what)) return false;
    b.p = nullptr;
    b.bytes = 0;
  }
  if (!cuda_ok(cudaMalloc(&b.p, want), what)) {
    // retry with the exact size before giving up
    if (want == bytes || !cuda_ok(cudaMalloc(&b.p, bytes), what)) {
      b.p = nullptr;
      return false;
    }
    want = bytes;
  }
  b.bytes = want;
  return true;
}

static void release(DevBuf& b) {
  if (b.p) cudaFree(b.p);
  b.p = nullptr;
  b.bytes = 0;
}

struct DevTensor {
  int type = -1;
  uint8_t* d = nullptr;
  int64_t rows = 0, cols = 0, rowBytes = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Handles

struct lethe_model {
  lethe_config cfg;
  int device = 0;
  cudaStream_t stream = nullptr;
  DevTensor glob[LETHE_TENSOR_KIND_COUNT];            // TOK_EMBD, OUT_NORM, OUTPUT
  std::vector<std::vector<DevTensor>> layers;          // [n_layers][LETHE_TENSOR_KIND_COUNT]
  DevBuf x, xb, q, k, v, ao, hb, hb2, xl, att, meta, out;  // forward scratch
  std::vector<uint8_t> hmeta;
  std::vector<float> hout;
  bool kvF16 = false;  // K/V rows stored as __half (cfg.kv_type == LETHE_KV_F16)
  int kvEs = 4;        // bytes per stored K/V element
};

struct KVLayer {
  uint8_t* k = nullptr;  // [cap x kvDim] elements of kvEs bytes (float or __half)
  uint8_t* v = nullptr;
  int32_t len = 0, cap = 0;
  std::vector<int32_t> pos;
};

struct lethe_kv {
  lethe_model* m = nullptr;
  int device = 0;
  int64_t kvDim = 0;
  std::vector<KVLayer> layers;
  DevBuf plan;  // keep lists and jobs of lethe_kv_compact (not the model's scratch: a forward may be running)
};

const lethe_model* lethe_kv_model(const lethe_kv* kv) { return kv->m; }

static bool set_device(int device) { return cuda_ok(cudaSetDevice(device), "cudaSetDevice"); }

// ---------------------------------------------------------------------------------------------------------
// Model

using lethe_abi::is_global_kind;
using lethe_abi::is_vector_kind;
using lethe_abi::kind_name;

// The ggml types the kernels take (row_bytes knows them).
static bool cuda_type_supported(int32_t type) { return row_bytes(type, 32) > 0; }

static void free_tensor(DevTensor& t) {
  if (t.d) cudaFree(t.d);
  t = DevTensor();
}

// Returns the device count (> 0), or -1 with the error set.
static int device_count_or_error() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    set_error("no CUDA device: %s", cudaGetErrorString(e));
    return -1;
  }
  if (n <= 0) {
    set_error("no CUDA device: cudaGetDeviceCount reported 0 devices");
    return -1;
  }
  return n;
}

static void model_destroy(lethe_model* m) {
  if (!m) return;
  cudaSetDevice(m->device);
  if (m->stream) cudaStreamSynchronize(m->stream);
  for (auto& t : m->glob) free_tensor(t);
  for (auto& l : m->layers)
    for (auto& t : l) free_tensor(t);
  for (DevBuf* b : {&m->x, &m->xb, &m->q, &m->k, &m->v, &m->ao, &m->hb, &m->hb2, &m->xl, &m->att, &m->meta,
                    &m->out})
    release(*b);
  if (m->stream) cudaStreamDestroy(m->stream);
  delete m;
}

extern "C" LETHE_API lethe_model* lethe_model_create(const lethe_config* cfg) {
  try {
    if (!lethe_abi::check_config(cfg)) return nullptr;
    const int n = device_count_or_error();
    if (n < 0) return nullptr;
    if (cfg->device >= n) {
      set_error("no CUDA device: device %d requested, %d present", cfg->device, n);
      return nullptr;
    }
    if (!set_device(cfg->device)) return nullptr;
    lethe_model* m = new lethe_model();
    m->cfg = *cfg;
    m->device = cfg->device;
    m->kvF16 = cfg->kv_type == LETHE_KV_F16;
    m->kvEs = m->kvF16 ? 2 : 4;
    m->layers.assign(cfg->n_layers, std::vector<DevTensor>(LETHE_TENSOR_KIND_COUNT));
    if (!cuda_ok(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking), "cudaStreamCreate")) {
      m->stream = nullptr;
      model_destroy(m);
      return nullptr;
    }
    return m;
  } catch (const std::bad_alloc&) {
    set_error("lethe_model_create: out of host memory");
    return nullptr;
  }
}

extern "C" LETHE_API int lethe_model_set_tensor(lethe_model* m, int32_t kind, int32_t layer, int32_t ggml_type,
                                                const void* data, int64_t rows, int64_t cols) {
  try {
    if (!m) {
      set_error("lethe_model_set_tensor: model is NULL");
      return 1;
    }
    if (!lethe_abi::check_tensor(m->cfg, kind, layer, ggml_type, data, rows, cols, cuda_type_supported)) return 1;
    const bool global = is_global_kind(kind);
    const int64_t rb = row_bytes(ggml_type, cols);
    if (!set_device(m->device)) return 1;
    DevTensor t;
    t.rows = rows;
    t.cols = cols;
    if (is_vector_kind(kind)) {
      std::vector<float> f((size_t)cols);
      host_to_f32(ggml_type, (const uint8_t*)data, f.data(), cols);
      t.type = T_F32;
      t.rowBytes = cols * 4;
      if (!cuda_ok(cudaMalloc(&t.d, (size_t)cols * 4), "cudaMalloc (tensor)")) return 1;
      if (!cuda_ok(cudaMemcpy(t.d, f.data(), (size_t)cols * 4, cudaMemcpyHostToDevice), "cudaMemcpy (tensor)")) {
        free_tensor(t);
        return 1;
      }
    } else {
      t.type = ggml_type;
      t.rowBytes = rb;
      const size_t bytes = (size_t)(rows * rb);
      if (!cuda_ok(cudaMalloc(&t.d, bytes), "cudaMalloc (tensor)")) return 1;
      if (!cuda_ok(cudaMemcpy(t.d, data, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (tensor)")) {
        free_tensor(t);
        return 1;
      }
    }
    DevTensor& slot = global ? m->glob[kind] : m->layers[layer][kind];
    free_tensor(slot);
    slot = t;
    return 0;
  } catch (const std::bad_alloc&) {
    set_error("lethe_model_set_tensor: out of host memory");
    return 1;
  }
}

extern "C" LETHE_API void lethe_model_free(lethe_model* m) { model_destroy(m); }

// ---------------------------------------------------------------------------------------------------------
// KV cache

static void kv_layer_free(KVLayer& L) {
  if (L.k) cudaFree(L.k);
  if (L.v) cudaFree(L.v);
  L.k = L.v = nullptr;
  L.cap = 0;
}

// Replaces L's buffers with fresh ones of `cap` rows (contents not kept, len untouched).
static bool kv_alloc(lethe_kv* kv, int64_t cap, uint8_t** k, uint8_t** v) {
  const size_t bytes = (size_t)cap * (size_t)kv->kvDim * kv->m->kvEs;
  *k = *v = nullptr;
  if (!cuda_ok(cudaMalloc((void**)k, bytes), "cudaMalloc (kv)")) return false;
  if (!cuda_ok(cudaMalloc((void**)v, bytes), "cudaMalloc (kv)")) {
    cudaFree(*k);
    *k = nullptr;
    return false;
  }
  return true;
}

// Capacity for `need` rows: doubling from max(16, cap).
static int64_t grown_capacity(int64_t cap, int64_t need) {
  int64_t next = std::max<int64_t>(16, cap);
  while (next < need) next *= 2;
  return next;
}

// Make room for `need` rows in layer l, keeping the first len rows.
static bool kv_reserve(lethe_kv* kv, int l, int64_t need) {
  KVLayer& L = kv->layers[l];
  if (need <= L.cap) return true;
  if (need > INT32_MAX / 2) {
    set_error("kv: layer %d would hold %lld rows (too many)", l, (long long)need);
    return false;
  }
  const int64_t cap = grown_capacity(L.cap, need);
  uint8_t *k, *v;
  if (!kv_alloc(kv, cap, &k, &v)) return false;
  cudaStream_t st = kv->m->stream;
  const size_t used = (size_t)L.len * (size_t)kv->kvDim * kv->m->kvEs;
  bool ok = true;
  if (used > 0) {
    ok = cuda_ok(cudaMemcpyAsync(k, L.k, used, cudaMemcpyDeviceToDevice, st), "cudaMemcpyAsync (kv grow)") &&
         cuda_ok(cudaMemcpyAsync(v, L.v, used, cudaMemcpyDeviceToDevice, st), "cudaMemcpyAsync (kv grow)");
  }
  ok = ok && cuda_ok(cudaStreamSynchronize(st), "cudaStreamSynchronize (kv grow)");
  if (!ok) {
    cudaFree(k);
    cudaFree(v);
    return false;
  }
  kv_layer_free(L);
  L.k = k;
  L.v = v;
  L.cap = (int32_t)cap;
  return true;
}

extern "C" LETHE_API lethe_kv* lethe_kv_create(lethe_model* m) {
  try {
    if (!m) {
      set_error("lethe_kv_create: NULL model");
      return nullptr;
    }
    lethe_kv* kv = new lethe_kv();
    kv->m = m;
    kv->device = m->device;
    kv->kvDim = (int64_t)m->cfg.n_kv_heads * m->cfg.head_dim;
    kv->layers.resize(m->cfg.n_layers);
    return kv;
  } catch (const std::bad_alloc&) {
    set_error("lethe_kv_create: out of host memory");
    return nullptr;
  }
}

extern "C" LETHE_API void lethe_kv_free(lethe_kv* kv) {
  if (!kv) return;
  cudaSetDevice(kv->device);
  for (auto& L : kv->layers) kv_layer_free(L);
  release(kv->plan);
  delete kv;
}

static bool kv_layer_ok(lethe_kv* kv, int32_t layer, const char* fn) {
  return lethe_abi::check_kv_layer(kv, layer, kv ? (int32_t)kv->layers.size() : 0, fn);
}

extern "C" LETHE_API int32_t lethe_kv_len(lethe_kv* kv, int32_t layer) {
  if (!kv_layer_ok(kv, layer, "lethe_kv_len")) return -1;
  return kv->layers[layer].len;
}

// ---- prune plans (lethe.h: keep_len per layer, -1 = unchanged; kept indices concatenated)

// The device jobs of one cache's checked plan: one per layer whose kept rows move (kept rows before the
// first moved one stay in place). `keepOff` is where the plan's keep_rows start in the keep array on the
// device. Call after the caches have their capacity for the step (the jobs hold the layers' buffers).
static void compact_jobs(lethe_kv* kv, const int32_t* keep_len, const int32_t* keep_rows, int64_t keepOff,
                         std::vector<CompactJob>& jobs) {
  const int32_t words = (int32_t)(kv->kvDim * kv->m->kvEs / 4);  // kvDim is even: whole 32-bit words
  int64_t o = 0;
  for (size_t l = 0; l < kv->layers.size(); l++) {
    const int32_t n = keep_len[l];
    if (n < 0) continue;
    const int32_t* keep = keep_rows + o;
    int32_t from = 0;
    while (from < n && keep[from] == from) from++;
    if (from < n) {
      KVLayer& L = kv->layers[l];
      jobs.push_back({(uint32_t*)L.k, (uint32_t*)L.v, keepOff + o, n, from, words, 0});
    }
    o += n;
  }
}

// The host side of a checked plan: lengths and positions.
static void compact_index(lethe_kv* kv, const int32_t* keep_len, const int32_t* keep_rows) {
  int64_t o = 0;
  for (size_t l = 0; l < kv->layers.size(); l++) {
    const int32_t n = keep_len[l];
    if (n < 0) continue;
    KVLayer& L = kv->layers[l];
    lethe_abi::compact_positions(L.pos.data(), keep_rows + o, n);
    L.pos.resize(n);
    L.len = n;
    o += n;
  }
}

// One launch of kv_compact_kernel for every job of a step (jobs and keep lists already on the device).
static bool launch_compact(cudaStream_t st, const CompactJob* djobs, int nJobs, const int32_t* dkeep,
                           int32_t maxWords) {
  if (nJobs == 0) return true;
  const unsigned chunks = (unsigned)std::min<int64_t>(64, (maxWords + ROW_THREADS - 1) / ROW_THREADS);
  LAUNCH(kv_compact_kernel, dim3(2 * (unsigned)nJobs, chunks), ROW_THREADS, 0, st, djobs, dkeep);
  CK_LAUNCH("kv_compact");
  return true;
}

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

static bool kv_compact_impl(lethe_kv* kv, const int32_t* keep_len, const int32_t* keep_rows) {
  if (!lethe_abi::check_plans(1, &kv, (int32_t)kv->layers.size(), keep_len, keep_rows, "lethe_kv_compact")) {
    return false;
  }
  std::vector<CompactJob> jobs;
  compact_jobs(kv, keep_len, keep_rows, 0, jobs);
  if (!jobs.empty()) {
    int64_t nKeep = 0;
    int32_t maxWords = 0;
    for (size_t l = 0; l < kv->layers.size(); l++) nKeep += std::max(0, keep_len[l]);
    for (const CompactJob& J : jobs) maxWords = std::max(maxWords, J.words);
    const size_t offJobs = align16((size_t)nKeep * 4), bytes = offJobs + jobs.size() * sizeof(CompactJob);
    std::vector<uint8_t> blob(bytes);
    memcpy(blob.data(), keep_rows, (size_t)nKeep * 4);
    memcpy(blob.data() + offJobs, jobs.data(), jobs.size() * sizeof(CompactJob));
    if (!set_device(kv->device) || !ensure(kv->plan, bytes, "kv plan")) return false;
    cudaStream_t st = kv->m->stream;
    uint8_t* d = (uint8_t*)kv->plan.p;
    if (!cuda_ok(cudaMemcpyAsync(d, blob.data(), bytes, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync (compact)") ||
        !launch_compact(st, (const CompactJob*)(d + offJobs), (int)jobs.size(), (const int32_t*)d, maxWords) ||
        !cuda_ok(cudaStreamSynchronize(st), "cudaStreamSynchronize (compact)"))
      return false;
  }
  compact_index(kv, keep_len, keep_rows);
  return true;
}

extern "C" LETHE_API int32_t lethe_kv_compact(lethe_kv* kv, const int32_t* keep_len, const int32_t* keep_rows) {
  try {
    if (!kv) {
      set_error("lethe_kv_compact: kv is NULL");
      return 1;
    }
    if (!keep_len) {
      set_error("lethe_kv_compact: keep_len is NULL");
      return 1;
    }
    return kv_compact_impl(kv, keep_len, keep_rows) ? 0 : 1;
  } catch (const std::bad_alloc&) {
    set_error("lethe_kv_compact: out of host memory");
    return 1;
  }
}

static int32_t kv_read_impl(lethe_kv* kv, int32_t layer, float* k, float* v, int32_t* pos) {
  if (!kv_layer_ok(kv, layer, "lethe_kv_read")) return 1;
  KVLayer& L = kv->layers[layer];
  const size_t count = (size_t)L.len * (size_t)kv->kvDim;
  if (count > 0 && (k || v)) {
    if (!set_device(kv->device)) return 1;
    cudaStream_t st = kv->m->stream;
    if (!kv->m->kvF16) {
      const size_t bytes = count * 4;
      if (k && !cuda_ok(cudaMemcpyAsync(k, L.k, bytes, cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync (kv read)"))
        return 1;
      if (v && !cuda_ok(cudaMemcpyAsync(v, L.v, bytes, cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync (kv read)"))
        return 1;
      if (!cuda_ok(cudaStreamSynchronize(st), "cudaStreamSynchronize (kv read)")) return 1;
    } else {  // halves to the host, widened exactly to f32 there
      std::vector<uint16_t> h(count);
      for (int which = 0; which < 2; which++) {
        float* dst = which == 0 ? k : v;
        if (!dst) continue;
        if (!cuda_ok(cudaMemcpyAsync(h.data(), which == 0 ? L.k : L.v, count * 2, cudaMemcpyDeviceToHost, st),
                     "cudaMemcpyAsync (kv read)") ||
            !cuda_ok(cudaStreamSynchronize(st), "cudaStreamSynchronize (kv read)"))
          return 1;
        for (size_t i = 0; i < count; i++) dst[i] = __half2float(__ushort_as_half(h[i]));
      }
    }
  }
  if (pos && L.len > 0) memcpy(pos, L.pos.data(), (size_t)L.len * 4);
  return 0;
}

extern "C" LETHE_API int32_t lethe_kv_read(lethe_kv* kv, int32_t layer, float* k, float* v, int32_t* pos) {
  try {
    return kv_read_impl(kv, layer, k, v, pos);
  } catch (const std::bad_alloc&) {
    set_error("lethe_kv_read: out of host memory");
    return 1;
  }
}

extern "C" LETHE_API int32_t lethe_kv_write(lethe_kv* kv, int32_t layer, const float* k, const float* v,
                                            const int32_t* pos, int32_t n) {
  try {
    if (!kv_layer_ok(kv, layer, "lethe_kv_write")) return 1;
    if (!lethe_abi::check_rows(n, k, v, pos, "lethe_kv_write")) return 1;
    KVLayer& L = kv->layers[layer];
    if (!set_device(kv->device)) return 1;
    if (n > L.cap) {
      uint8_t *nk, *nv;
      const int64_t cap = grown_capacity(0, n);
      if (!kv_alloc(kv, cap, &nk, &nv)) return 1;
      kv_layer_free(L);
      L.k = nk;
      L.v = nv;
      L.cap = (int32_t)cap;
    }
    const size_t count = (size_t)n * (size_t)kv->kvDim;
    if (count > 0) {
      cudaStream_t st = kv->m->stream;
      const void *hk = k, *hv = v;
      std::vector<uint16_t> rk, rv;
      if (kv->m->kvF16) {  // round on the host with the same RNE conversion as the append kernel
        rk.resize(count);
        rv.resize(count);
        for (size_t i = 0; i < count; i++) {
          rk[i] = __half_as_ushort(__float2half_rn(k[i]));
          rv[i] = __half_as_ushort(__float2half_rn(v[i]));
        }
        hk = rk.data();
        hv = rv.data();
      }
      const size_t bytes = count * kv->m->kvEs;
      if (!cuda_ok(cudaMemcpyAsync(L.k, hk, bytes, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync (kv write)") ||
          !cuda_ok(cudaMemcpyAsync(L.v, hv, bytes, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync (kv write)") ||
          !cuda_ok(cudaStreamSynchronize(st), "cudaStreamSynchronize (kv write)")) {
        L.len = 0;  // contents undefined after a failed copy
        L.pos.clear();
        return 1;
      }
    }
    L.pos.assign(pos, pos + n);
    L.len = n;
    return 0;
  } catch (const std::bad_alloc&) {
    set_error("lethe_kv_write: out of host memory");
    return 1;
  }
}

extern "C" LETHE_API int64_t lethe_kv_bytes(lethe_kv* kv) {
  if (!kv) return 0;
  int64_t rows = 0;
  for (auto& L : kv->layers) rows += L.len;
  return rows * kv->kvDim * 2 * kv->m->kvEs;
}

// ---------------------------------------------------------------------------------------------------------
// Forward

// Attention probabilities held per chunk of rows (64 MiB); the emulator test builds with a tiny budget so that
// multi-chunk attention and the score accumulation across chunks are exercised.
#ifndef LETHE_ATT_BUDGET_FLOATS
#define LETHE_ATT_BUDGET_FLOATS ((int64_t)1 << 24)
#endif
static const int64_t ATT_BUDGET_FLOATS = LETHE_ATT_BUDGET_FLOATS;

static bool launch_matmul(lethe_model* m, const DevTensor& W, const float* x, int n, float* y, const float* bias,
                          int accumulate) {
  dim3 grid((unsigned)W.rows, (unsigned)((n + MATMUL_TILE - 1) / MATMUL_TILE));
  const int in = (int)W.cols, out = (int)W.rows;
  switch (W.type) {
    case T_F32:
      LAUNCH(matmul_kernel<T_F32>, grid, MATMUL_THREADS, 0, m->stream, W.d, W.rowBytes, in, out, x, n, y, bias,
                                                                    accumulate);
      break;
    case T_F16:
      LAUNCH(matmul_kernel<T_F16>, grid, MATMUL_THREADS, 0, m->stream, W.d, W.rowBytes, in, out, x, n, y, bias,
                                                                    accumulate);
      break;
    case T_BF16:
      LAUNCH(matmul_kernel<T_BF16>, grid, MATMUL_THREADS, 0, m->stream, W.d, W.rowBytes, in, out, x, n, y, bias,
                                                                     accumulate);
      break;
    case T_Q8_0:
      LAUNCH(matmul_kernel<T_Q8_0>, grid, MATMUL_THREADS, 0, m->stream, W.d, W.rowBytes, in, out, x, n, y, bias,
                                                                     accumulate);
      break;
    case T_Q4_0:
      LAUNCH(matmul_kernel<T_Q4_0>, grid, MATMUL_THREADS, 0, m->stream, W.d, W.rowBytes, in, out, x, n, y, bias,
                                                                     accumulate);
      break;
    default:
      set_error("matmul: unsupported weight type %d", W.type);
      return false;
  }
  CK_LAUNCH("matmul");
  return true;
}

static bool launch_embed(lethe_model* m, const DevTensor& E, const int32_t* tokens, int n, float* x) {
  const int dim = (int)E.cols;
  switch (E.type) {
    case T_F32:
      LAUNCH(embed_kernel<T_F32>, n, ROW_THREADS, 0, m->stream, E.d, E.rowBytes, dim, tokens, n, x);
      break;
    case T_F16:
      LAUNCH(embed_kernel<T_F16>, n, ROW_THREADS, 0, m->stream, E.d, E.rowBytes, dim, tokens, n, x);
      break;
    case T_BF16:
      LAUNCH(embed_kernel<T_BF16>, n, ROW_THREADS, 0, m->stream, E.d, E.rowBytes, dim, tokens, n, x);
      break;
    case T_Q8_0:
      LAUNCH(embed_kernel<T_Q8_0>, n, ROW_THREADS, 0, m->stream, E.d, E.rowBytes, dim, tokens, n, x);
      break;
    case T_Q4_0:
      LAUNCH(embed_kernel<T_Q4_0>, n, ROW_THREADS, 0, m->stream, E.d, E.rowBytes, dim, tokens, n, x);
      break;
    default:
      set_error("embedding: unsupported type %d", E.type);
      return false;
  }
  CK_LAUNCH("embedding");
  return true;
}

static bool forward_impl(lethe_model* m, int32_t n_seq, lethe_kv** kvs, const int32_t* keep_len,
                         const int32_t* keep_rows, const int32_t* tokens, const int32_t* n_tokens,
                         const int32_t* start_pos, const int32_t* logits_mode, float* logits_out,
                         const float* score_decay, const int32_t* score_window, float** scores_out) {
  const lethe_config& c = m->cfg;
  const int nL = c.n_layers, dim = c.dim, nH = c.n_heads, nKV = c.n_kv_heads, hd = c.head_dim;
  const int qDim = nH * hd, kvDim = nKV * hd, ffn = c.ffn_dim, vocab = c.vocab_size;

  // ---- validate
  int64_t N = 0, NL = 0;
  if (!lethe_abi::check_forward(m, c, n_seq, kvs, keep_len, keep_rows, tokens, n_tokens, start_pos, logits_mode,
                                logits_out, score_decay, score_window, &N, &NL)) {
    return false;
  }
  const DevTensor& embd = m->glob[LETHE_TOK_EMBD];
  const DevTensor& outNorm = m->glob[LETHE_OUT_NORM];
  const DevTensor& outW = m->glob[LETHE_OUTPUT].d ? m->glob[LETHE_OUTPUT] : m->glob[LETHE_TOK_EMBD];
  if (!embd.d || !outNorm.d) {
    set_error("lethe_forward: tensor %s not set", embd.d ? "out_norm" : "token_embd");
    return false;
  }
  static const int required[] = {LETHE_ATTN_NORM, LETHE_WQ,     LETHE_WK,   LETHE_WV,    LETHE_WO,
                                 LETHE_FFN_NORM,  LETHE_W_GATE, LETHE_W_UP, LETHE_W_DOWN};
  for (int l = 0; l < nL; l++)
    for (int kind : required)
      if (!m->layers[l][kind].d) {
        set_error("lethe_forward: tensor %s of layer %d not set", kind_name(kind), l);
        return false;
      }
  std::vector<int> wantScores(n_seq, 0);
  int nJobs = 0;
  for (int s = 0; s < n_seq; s++) {
    if (score_decay && score_window && score_window[s] > 0) {
      wantScores[s] = 1;
      nJobs++;
    }
  }

  if (!set_device(m->device)) return false;

  // ---- grow caches for the append: room for the rows held now and for the kept rows + the new ones
  for (int s = 0; s < n_seq; s++)
    for (int l = 0; l < nL; l++) {
      const int32_t len = kvs[s]->layers[l].len, kept = keep_len ? keep_len[(int64_t)s * nL + l] : -1;
      if (!kv_reserve(kvs[s], l, std::max<int64_t>(len, (kept >= 0 ? kept : len) + (int64_t)n_tokens[s]))) {
        return false;
      }
    }

  // ---- the step's prune plans: device jobs (one launch, first on the stream), then the host index
  std::vector<CompactJob> cjobs;
  int64_t nKeep = 0;
  int32_t maxWords = 0;
  if (keep_len) {
    for (int s = 0; s < n_seq; s++) {
      const int32_t* kl = keep_len + (int64_t)s * nL;
      compact_jobs(kvs[s], kl, keep_rows + nKeep, nKeep, cjobs);
      compact_index(kvs[s], kl, keep_rows + nKeep);
      for (int l = 0; l < nL; l++) nKeep += std::max(0, kl[l]);
    }
    for (const CompactJob& J : cjobs) maxWords = std::max(maxWords, J.words);
  }

  // ---- host metadata
  std::vector<int32_t> firstRow(n_seq), rowSeq(N), rowT(N);
  {
    int64_t r = 0;
    for (int s = 0; s < n_seq; s++) {
      firstRow[s] = (int32_t)r;
      for (int t = 0; t < n_tokens[s]; t++, r++) rowSeq[r] = s, rowT[r] = t;
    }
  }
  const size_t offTok = 0;
  const size_t offPos = align16(offTok + (size_t)N * 4);
  const size_t offW = align16(offPos + (size_t)N * 4);
  const size_t offLRows = align16(offW + (size_t)N * 4);
  const size_t offMeta = align16(offLRows + (size_t)NL * 4);
  const size_t offJobs = align16(offMeta + (size_t)nL * N * sizeof(RowMeta));
  const size_t offKeep = align16(offJobs + (size_t)nL * nJobs * sizeof(ScoreJob));
  const size_t offCJobs = align16(offKeep + (size_t)nKeep * 4);
  const size_t metaBytes = align16(offCJobs + cjobs.size() * sizeof(CompactJob));
  m->hmeta.assign(metaBytes, 0);
  uint8_t* hblob = m->hmeta.data();
  int32_t* hTok = (int32_t*)(hblob + offTok);
  int32_t* hPos = (int32_t*)(hblob + offPos);
  float* hW = (float*)(hblob + offW);
  int32_t* hLRows = (int32_t*)(hblob + offLRows);
  RowMeta* hMeta = (RowMeta*)(hblob + offMeta);
  ScoreJob* hJobs = (ScoreJob*)(hblob + offJobs);
  memcpy(hTok, tokens, (size_t)N * 4);
  if (nKeep > 0) memcpy(hblob + offKeep, keep_rows, (size_t)nKeep * 4);
  if (!cjobs.empty()) memcpy(hblob + offCJobs, cjobs.data(), cjobs.size() * sizeof(CompactJob));
  {
    int64_t li = 0;
    for (int s = 0; s < n_seq; s++) {
      const int T = n_tokens[s];
      for (int t = 0; t < T; t++) {
        const int64_t r = firstRow[s] + t;
        hPos[r] = start_pos[s] + t;
        hW[r] = wantScores[s] && T - 1 - t < score_window[s] ? (float)pow((double)score_decay[s], T - 1 - t) : 0.f;
      }
      if (logits_mode[s] == 1) hLRows[li++] = firstRow[s] + T - 1;
      if (logits_mode[s] == 2)
        for (int t = 0; t < T; t++) hLRows[li++] = firstRow[s] + t;
    }
  }
  // Attention chunks per layer: consecutive rows whose probabilities fit the budget (a single row always fits).
  std::vector<std::vector<std::pair<int, int>>> chunks(nL);
  int64_t attFloats = 0;
  const int64_t logitFloats = NL * vocab;
  int64_t outFloats = logitFloats;
  std::vector<int64_t> scoreOff((size_t)n_seq * nL, -1);
  for (int l = 0; l < nL; l++) {
    RowMeta* M = hMeta + (size_t)l * N;
    int64_t cur = 0;
    int start = 0;
    for (int64_t r = 0; r < N; r++) {
      const int s = rowSeq[r];
      KVLayer& L = kvs[s]->layers[l];
      const int64_t nvis = (int64_t)L.len + rowT[r] + 1;
      const int64_t need = (int64_t)nH * nvis;
      if (cur > 0 && cur + need > ATT_BUDGET_FLOATS) {
        chunks[l].push_back({start, (int)r});
        start = (int)r;
        cur = 0;
      }
      const int64_t rowOff = ((int64_t)L.len + rowT[r]) * kvDim * m->kvEs;  // bytes
      M[r].kdst = L.k + rowOff;
      M[r].vdst = L.v + rowOff;
      M[r].kbase = L.k;
      M[r].vbase = L.v;
      M[r].attOff = cur;
      M[r].nvis = (int32_t)nvis;
      cur += need;
      attFloats = std::max(attFloats, cur);
    }
    chunks[l].push_back({start, (int)N});
    int j = 0;
    for (int s = 0; s < n_seq; s++) {
      if (!wantScores[s]) continue;
      ScoreJob& J = hJobs[(size_t)l * nJobs + j++];
      J.firstRow = firstRow[s];
      J.nRows = n_tokens[s];
      J.len = kvs[s]->layers[l].len + n_tokens[s];
      J.outOff = outFloats;
      scoreOff[(size_t)s * nL + l] = outFloats;
      outFloats += J.len;
    }
  }

  // ---- scratch
  if (!ensure(m->x, (size_t)N * dim * 4, "scratch x") || !ensure(m->xb, (size_t)N * dim * 4, "scratch xb") ||
      !ensure(m->q, (size_t)N * qDim * 4, "scratch q") || !ensure(m->ao, (size_t)N * qDim * 4, "scratch ao") ||
      !ensure(m->k, (size_t)N * kvDim * 4, "scratch k") || !ensure(m->v, (size_t)N * kvDim * 4, "scratch v") ||
      !ensure(m->hb, (size_t)N * ffn * 4, "scratch hb") || !ensure(m->hb2, (size_t)N * ffn * 4, "scratch hb2") ||
      !ensure(m->xl, (size_t)std::max<int64_t>(NL, 1) * dim * 4, "scratch xl") ||
      !ensure(m->att, (size_t)attFloats * 4, "scratch att") || !ensure(m->meta, metaBytes, "scratch meta") ||
      !ensure(m->out, (size_t)std::max<int64_t>(outFloats, 1) * 4, "scratch out"))
    return false;
  float *x = (float*)m->x.p, *xb = (float*)m->xb.p, *q = (float*)m->q.p, *ao = (float*)m->ao.p;
  float *k = (float*)m->k.p, *v = (float*)m->v.p, *h1 = (float*)m->hb.p, *h2 = (float*)m->hb2.p;
  float *xl = (float*)m->xl.p, *att = (float*)m->att.p, *out = (float*)m->out.p;
  uint8_t* db = (uint8_t*)m->meta.p;
  const int32_t* dTok = (const int32_t*)(db + offTok);
  const int32_t* dPos = (const int32_t*)(db + offPos);
  const float* dW = (const float*)(db + offW);
  const int32_t* dLRows = (const int32_t*)(db + offLRows);
  const RowMeta* dMeta = (const RowMeta*)(db + offMeta);
  const ScoreJob* dJobs = (const ScoreJob*)(db + offJobs);
  cudaStream_t st = m->stream;
  const int n = (int)N;

  // ---- enqueue the whole step: the plans' compaction first, then the layers
  CK(cudaMemcpyAsync(db, hblob, metaBytes, cudaMemcpyHostToDevice, st));
  if (!launch_compact(st, (const CompactJob*)(db + offCJobs), (int)cjobs.size(), (const int32_t*)(db + offKeep),
                      maxWords))
    return false;
  if (outFloats > logitFloats)
    CK(cudaMemsetAsync(out + logitFloats, 0, (size_t)(outFloats - logitFloats) * 4, st));
  if (!launch_embed(m, embd, dTok, n, x)) return false;
  for (int l = 0; l < nL; l++) {
    const std::vector<DevTensor>& W = m->layers[l];
    const RowMeta* lm = dMeta + (size_t)l * N;
    LAUNCH(rmsnorm_kernel, n, ROW_THREADS, 0, st, x, (const float*)W[LETHE_ATTN_NORM].d, xb, dim, c.norm_eps, n);
    CK_LAUNCH("rmsnorm");
    if (!launch_matmul(m, W[LETHE_WQ], xb, n, q, (const float*)W[LETHE_BQ].d, 0)) return false;
    if (!launch_matmul(m, W[LETHE_WK], xb, n, k, (const float*)W[LETHE_BK].d, 0)) return false;
    if (!launch_matmul(m, W[LETHE_WV], xb, n, v, (const float*)W[LETHE_BV].d, 0)) return false;
    LAUNCH(rope_kernel, n, ROW_THREADS, 0, st, q, k, dPos, nH, nKV, hd, (double)c.rope_theta, c.rope_style, n);
    CK_LAUNCH("rope");
    if (m->kvF16) {
      LAUNCH(kv_append_kernel<__half>, n, ROW_THREADS, 0, st, k, v, lm, kvDim, n);
    } else {
      LAUNCH(kv_append_kernel<float>, n, ROW_THREADS, 0, st, k, v, lm, kvDim, n);
    }
    CK_LAUNCH("kv_append");
    for (const auto& ch : chunks[l]) {
      const int rows = ch.second - ch.first;
      if (rows <= 0) continue;
      const dim3 grid((unsigned)rows, (unsigned)nH);
      if (m->kvF16) {
        LAUNCH(attention_kernel<__half>, grid, ATTN_THREADS, 0, st, q, lm, att, ao, ch.first, nH, nKV, hd);
      } else {
        LAUNCH(attention_kernel<float>, grid, ATTN_THREADS, 0, st, q, lm, att, ao, ch.first, nH, nKV, hd);
      }
      CK_LAUNCH("attention");
      if (nJobs > 0) {
        LAUNCH(scores_kernel, nJobs, ROW_THREADS, 0, st, att, lm, dJobs + (size_t)l * nJobs, dW, out, ch.first,
                                                     ch.second, nH);
        CK_LAUNCH("scores");
      }
    }
    if (!launch_matmul(m, W[LETHE_WO], ao, n, x, nullptr, 1)) return false;
    LAUNCH(rmsnorm_kernel, n, ROW_THREADS, 0, st, x, (const float*)W[LETHE_FFN_NORM].d, xb, dim, c.norm_eps, n);
    CK_LAUNCH("rmsnorm");
    if (!launch_matmul(m, W[LETHE_W_GATE], xb, n, h1, nullptr, 0)) return false;
    if (!launch_matmul(m, W[LETHE_W_UP], xb, n, h2, nullptr, 0)) return false;
    const int64_t cnt = N * ffn;
    LAUNCH(swiglu_kernel, (unsigned)((cnt + ROW_THREADS - 1) / ROW_THREADS), ROW_THREADS, 0, st, h1, h2, cnt);
    CK_LAUNCH("swiglu");
    if (!launch_matmul(m, W[LETHE_W_DOWN], h1, n, x, nullptr, 1)) return false;
  }
  if (NL > 0) {
    const int nl = (int)NL;
    LAUNCH(gather_rows_kernel<float>, nl, ROW_THREADS, 0, st, x, dLRows, xl, dim, nl);
    CK_LAUNCH("gather logits rows");
    LAUNCH(rmsnorm_kernel, nl, ROW_THREADS, 0, st, xl, (const float*)outNorm.d, xb, dim, c.norm_eps, nl);
    CK_LAUNCH("rmsnorm (output)");
    if (!launch_matmul(m, outW, xb, nl, out, nullptr, 0)) return false;
  }
  m->hout.resize((size_t)outFloats);
  if (outFloats > 0)
    CK(cudaMemcpyAsync(m->hout.data(), out, (size_t)outFloats * 4, cudaMemcpyDeviceToHost, st));
  CK(cudaStreamSynchronize(st));  // the one host synchronisation of the step
  CK(cudaGetLastError());

  // ---- hand back results, commit the appends
  if (NL > 0) memcpy(logits_out, m->hout.data(), (size_t)logitFloats * 4);
  for (int s = 0; s < n_seq; s++) {
    const int T = n_tokens[s];
    for (int l = 0; l < nL; l++) {
      KVLayer& L = kvs[s]->layers[l];
      const int64_t off = scoreOff[(size_t)s * nL + l];
      if (off >= 0 && scores_out && scores_out[(size_t)s * nL + l])
        memcpy(scores_out[(size_t)s * nL + l], m->hout.data() + off, (size_t)(L.len + T) * 4);
      for (int t = 0; t < T; t++) L.pos.push_back(start_pos[s] + t);
      L.len += T;
    }
  }
  return true;
}

extern "C" LETHE_API int32_t lethe_forward(lethe_model* m, int32_t n_seq, lethe_kv** kvs, const int32_t* keep_len,
                                           const int32_t* keep_rows, const int32_t* tokens, const int32_t* n_tokens,
                                           const int32_t* start_pos, const int32_t* logits_mode, float* logits_out,
                                           const float* score_decay, const int32_t* score_window,
                                           float** scores_out) {
  if (!m) {
    set_error("lethe_forward: model is NULL");
    return 1;
  }
  try {
    return forward_impl(m, n_seq, kvs, keep_len, keep_rows, tokens, n_tokens, start_pos, logits_mode, logits_out,
                        score_decay, score_window, scores_out)
               ? 0
               : 1;
  } catch (const std::bad_alloc&) {
    set_error("lethe_forward: out of host memory");
    return 1;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Info

extern "C" LETHE_API int32_t lethe_device_count(void) { return device_count_or_error(); }

extern "C" LETHE_API const char* lethe_backend_info(void) {
  static const std::string info = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
      return std::string("cuda (no CUDA device: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") +
             ")";
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return std::string("cuda (device properties unavailable)");
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    char buf[512];
    snprintf(buf, sizeof buf, "cuda: %s (sm_%d%d, %zu MiB), %d device(s), runtime %d.%d", p.name, p.major, p.minor,
             (size_t)(p.totalGlobalMem >> 20), n, rt / 1000, (rt % 1000) / 10);
    return std::string(buf);
  }();
  return info.c_str();
}

extern "C" LETHE_API int32_t lethe_abi_version(void) { return LETHE_ABI_VERSION; }
