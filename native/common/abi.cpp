// The shared half of the lethe.h ABI: last error, argument validation, keep lists (see abi.h).
#include "abi.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include <mutex>
#include <string>
#include <unordered_set>

namespace {

// The last error of any thread: src/engine/native.ts runs long forwards on a worker thread (nonblocking FFI)
// and reads lethe_last_error from the JS thread afterwards.
std::mutex g_error_mu;
std::string g_error;

const char* const KIND_NAMES[LETHE_TENSOR_KIND_COUNT] = {
    "token_embd", "attn_norm", "wq",     "wk",     "wv",     "wo",       "bq",    "bk",
    "bv",         "ffn_norm",  "w_gate", "w_up",   "w_down", "out_norm", "output"};

}  // namespace

extern "C" LETHE_API const char* lethe_last_error(void) {
  static thread_local std::string copy;  // stable for the caller until its next call
  std::lock_guard<std::mutex> lock(g_error_mu);
  copy = g_error;
  return copy.c_str();
}

namespace lethe_abi {

bool fail(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::lock_guard<std::mutex> lock(g_error_mu);
  g_error = buf;
  return false;
}

bool check_config(const lethe_config* cfg) {
  if (!cfg) return fail("lethe_model_create: cfg is NULL");
  const lethe_config& c = *cfg;
  if (c.dim <= 0 || c.dim > LETHE_MAX_DIM || c.n_layers <= 0 || c.n_layers > LETHE_MAX_LAYERS ||
      c.n_heads <= 0 || c.n_heads > LETHE_MAX_HEADS || c.n_kv_heads <= 0 || c.head_dim <= 0 ||
      c.head_dim > LETHE_MAX_HEAD_DIM || c.ffn_dim <= 0 || c.ffn_dim > LETHE_MAX_DIM || c.vocab_size <= 0 ||
      c.vocab_size > LETHE_MAX_VOCAB || (int64_t)c.n_heads * c.head_dim > LETHE_MAX_DIM) {
    return fail(
        "lethe_model_create: dimensions out of range (dim %d, layers %d, heads %d/%d, head_dim %d, ffn %d, "
        "vocab %d)",
        c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size);
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return fail("lethe_model_create: n_heads %d is not a multiple of n_kv_heads %d", c.n_heads, c.n_kv_heads);
  }
  if (c.head_dim % 2 != 0) return fail("lethe_model_create: head_dim %d must be even (RoPE pairs)", c.head_dim);
  if (!(c.norm_eps >= 0.f) || !isfinite(c.norm_eps) || !(c.rope_theta > 0.f) || !isfinite(c.rope_theta)) {
    return fail("lethe_model_create: bad norm_eps %g or rope_theta %g", c.norm_eps, c.rope_theta);
  }
  if (c.rope_style != LETHE_ROPE_INTERLEAVED && c.rope_style != LETHE_ROPE_HALF) {
    return fail("lethe_model_create: unknown rope_style %d", c.rope_style);
  }
  if (c.kv_type != LETHE_KV_F32 && c.kv_type != LETHE_KV_F16) {
    return fail("lethe_model_create: unknown kv_type %d (0 = f32, 1 = f16)", c.kv_type);
  }
  if (c.max_threads < 0 || c.device < 0 || c.parallel_work < 0) {
    return fail("lethe_model_create: max_threads %d, device %d and parallel_work %d must be >= 0", c.max_threads,
                c.device, c.parallel_work);
  }
  return true;
}

bool is_global_kind(int32_t kind) { return kind == LETHE_TOK_EMBD || kind == LETHE_OUT_NORM || kind == LETHE_OUTPUT; }

bool is_vector_kind(int32_t kind) {
  return kind == LETHE_ATTN_NORM || kind == LETHE_FFN_NORM || kind == LETHE_OUT_NORM || kind == LETHE_BQ ||
         kind == LETHE_BK || kind == LETHE_BV;
}

const char* kind_name(int32_t kind) { return kind >= 0 && kind < LETHE_TENSOR_KIND_COUNT ? KIND_NAMES[kind] : "?"; }

bool tensor_shape(const lethe_config& c, int32_t kind, int64_t* rows, int64_t* cols) {
  const int64_t q = (int64_t)c.n_heads * c.head_dim, kv = (int64_t)c.n_kv_heads * c.head_dim;
  int64_t r = 0, k = 0;
  switch (kind) {
    case LETHE_TOK_EMBD:
    case LETHE_OUTPUT:
      r = c.vocab_size, k = c.dim;
      break;
    case LETHE_ATTN_NORM:
    case LETHE_FFN_NORM:
    case LETHE_OUT_NORM:
      r = 1, k = c.dim;
      break;
    case LETHE_WQ:
      r = q, k = c.dim;
      break;
    case LETHE_WK:
    case LETHE_WV:
      r = kv, k = c.dim;
      break;
    case LETHE_WO:
      r = c.dim, k = q;
      break;
    case LETHE_BQ:
      r = 1, k = q;
      break;
    case LETHE_BK:
    case LETHE_BV:
      r = 1, k = kv;
      break;
    case LETHE_W_GATE:
    case LETHE_W_UP:
      r = c.ffn_dim, k = c.dim;
      break;
    case LETHE_W_DOWN:
      r = c.dim, k = c.ffn_dim;
      break;
    default:
      return false;
  }
  *rows = r;
  *cols = k;
  return true;
}

bool check_tensor(const lethe_config& c, int32_t kind, int32_t layer, int32_t type, const void* data,
                  int64_t rows, int64_t cols, bool (*supported)(int32_t type)) {
  int64_t er, ec;
  if (!tensor_shape(c, kind, &er, &ec)) return fail("lethe_model_set_tensor: unknown tensor kind %d", kind);
  const char* name = kind_name(kind);
  if (!is_global_kind(kind) && (layer < 0 || layer >= c.n_layers)) {
    return fail("lethe_model_set_tensor: %s: layer %d out of range [0, %d)", name, layer, c.n_layers);
  }
  if (!data) return fail("lethe_model_set_tensor: %s: data is NULL", name);
  if (rows != er || cols != ec) {
    return fail("lethe_model_set_tensor: %s: shape [%lld, %lld], expected [%lld, %lld]", name, (long long)rows,
                (long long)cols, (long long)er, (long long)ec);
  }
  if (!supported(type)) return fail("lethe_model_set_tensor: %s: unsupported ggml type %d", name, type);
  if ((type == LETHE_TYPE_Q8_0 || type == LETHE_TYPE_Q4_0) && cols % 32 != 0) {
    return fail("lethe_model_set_tensor: %s: quantized rows need a multiple of 32 columns, got %lld", name,
                (long long)cols);
  }
  return true;
}

bool check_kv_layer(const lethe_kv* kv, int32_t layer, int32_t n_layers, const char* fn) {
  if (!kv) return fail("%s: kv is NULL", fn);
  if (layer < 0 || layer >= n_layers) return fail("%s: layer %d out of range [0, %d)", fn, layer, n_layers);
  return true;
}

bool check_rows(int32_t n, const float* k, const float* v, const int32_t* pos, const char* fn) {
  if (n < 0 || n > LETHE_MAX_LAYER_ROWS) return fail("%s: bad row count %d", fn, n);
  if (n > 0 && (!k || !v || !pos)) return fail("%s: k, v and pos must be non-NULL when n > 0", fn);
  for (int32_t i = 0; i < n; i++) {
    if (pos[i] < 0) return fail("%s: negative position %d at row %d", fn, pos[i], i);
  }
  return true;
}

bool check_keep(const int32_t* keep, int32_t n, int32_t len, const char* fn) {
  if (n < 0 || n > len) return fail("%s: keeps %d rows of %d", fn, n, len);
  if (n > 0 && !keep) return fail("%s: keep list is NULL", fn);
  int32_t prev = -1;
  for (int32_t i = 0; i < n; i++) {
    if (keep[i] <= prev || keep[i] >= len) {
      return fail("%s: keep indices must be strictly ascending in [0, %d), got %d", fn, len, keep[i]);
    }
    prev = keep[i];
  }
  return true;
}

bool check_plans(int32_t n_seq, lethe_kv* const* kvs, int32_t n_layers, const int32_t* keep_len,
                 const int32_t* keep_rows, const char* fn) {
  if (!keep_len) return true;
  int64_t o = 0;
  for (int32_t s = 0; s < n_seq; s++) {
    for (int32_t l = 0; l < n_layers; l++) {
      const int32_t n = keep_len[(int64_t)s * n_layers + l];
      if (n == -1) continue;
      if (n > 0 && !keep_rows) return fail("%s: keep_rows is NULL", fn);
      if (!check_keep(n > 0 ? keep_rows + o : nullptr, n, lethe_kv_len(kvs[s], l), fn)) return false;
      o += n;
    }
  }
  return true;
}

bool check_forward(const lethe_model* m, const lethe_config& c, int32_t n_seq, lethe_kv** kvs,
                   const int32_t* keep_len, const int32_t* keep_rows, const int32_t* tokens,
                   const int32_t* n_tokens, const int32_t* start_pos, const int32_t* logits_mode,
                   const float* logits_out, const float* score_decay, const int32_t* score_window,
                   int64_t* n_total, int64_t* n_logits) {
  if (!m) return fail("lethe_forward: model is NULL");
  if (n_seq <= 0) return fail("lethe_forward: n_seq must be >= 1, got %d", n_seq);
  if (!kvs || !tokens || !n_tokens || !start_pos || !logits_mode) {
    return fail("lethe_forward: kvs, tokens, n_tokens, start_pos and logits_mode must be non-NULL");
  }
  std::unordered_set<const lethe_kv*> seen;
  int64_t N = 0, NL = 0;
  for (int32_t s = 0; s < n_seq; s++) {
    if (!kvs[s] || lethe_kv_model(kvs[s]) != m) {
      return fail("lethe_forward: kvs[%d] is NULL or belongs to another model", s);
    }
    if (!seen.insert(kvs[s]).second) return fail("lethe_forward: kvs[%d] appears twice in the batch", s);
    if (n_tokens[s] < 1) return fail("lethe_forward: n_tokens[%d] = %d (must be >= 1)", s, n_tokens[s]);
    if (start_pos[s] < 0 || (int64_t)start_pos[s] + n_tokens[s] > INT32_MAX) {
      return fail("lethe_forward: start_pos[%d] = %d out of range", s, start_pos[s]);
    }
    if (logits_mode[s] < 0 || logits_mode[s] > 2) {
      return fail("lethe_forward: logits_mode[%d] = %d (0 none, 1 last, 2 all)", s, logits_mode[s]);
    }
    if (score_decay && score_window) {
      if (score_window[s] < 0) return fail("lethe_forward: score_window[%d] = %d is negative", s, score_window[s]);
      if (score_window[s] > 0 && (!isfinite(score_decay[s]) || score_decay[s] < 0.f)) {
        return fail("lethe_forward: score_decay[%d] = %g (must be finite and >= 0)", s, score_decay[s]);
      }
    }
    N += n_tokens[s];
    NL += logits_mode[s] == 1 ? 1 : logits_mode[s] == 2 ? n_tokens[s] : 0;
    if (N > LETHE_MAX_STEP_TOKENS) {
      return fail("lethe_forward: more than %d tokens in one step", LETHE_MAX_STEP_TOKENS);
    }
  }
  if (NL > 0 && !logits_out) return fail("lethe_forward: logits_out is NULL but logits were requested");
  for (int64_t i = 0; i < N; i++) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return fail("lethe_forward: token id %d out of range [0, %d)", tokens[i], c.vocab_size);
    }
  }
  if (!check_plans(n_seq, kvs, c.n_layers, keep_len, keep_rows, "lethe_forward")) return false;
  *n_total = N;
  *n_logits = NL;
  return true;
}

void compact_positions(int32_t* pos, const int32_t* keep, int32_t n) {
  for (int32_t i = 0; i < n; i++) pos[i] = pos[keep[i]];
}

}  // namespace lethe_abi
