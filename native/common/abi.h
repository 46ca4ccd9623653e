// The half of the lethe.h ABI that both libraries share (native/common/abi.cpp, compiled into
// liblethe_cpu.so and liblethe_cuda.so): the last-error state behind lethe_last_error, the one validation of
// every ABI argument against lethe.h's limits, prune plans (keep lists) included, and position compaction.
// A library validates with these before it changes anything, so every entry point fails the same way on
// both.
#ifndef LETHE_COMMON_ABI_H
#define LETHE_COMMON_ABI_H

#include <stdint.h>

#include "../lethe.h"

// Implemented by each library: the model a cache belongs to.
const lethe_model* lethe_kv_model(const lethe_kv* kv);

namespace lethe_abi {

// Sets lethe_last_error (printf-style; process-wide, readable from any thread). Returns false, so that
// validation reads `if (...) return fail(...);`.
bool fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// lethe_config: every dimension positive and within lethe.h's limits, n_heads a multiple of n_kv_heads, an
// even head_dim, a known rope style and kv_type, finite norm_eps >= 0 and rope_theta > 0, max_threads,
// device and parallel_work >= 0.
bool check_config(const lethe_config* cfg);

// Tensor kinds: global (token embedding, output norm, output) or per layer; vectors (norms, biases: rows 1).
bool is_global_kind(int32_t kind);
bool is_vector_kind(int32_t kind);
const char* kind_name(int32_t kind);
// The [rows, cols] a kind has under `c` (vectors: [1, n]); false for an unknown kind.
bool tensor_shape(const lethe_config& c, int32_t kind, int64_t* rows, int64_t* cols);

// lethe_model_set_tensor's arguments: a known kind, a layer in range for per-layer kinds, non-NULL data, the
// kind's exact shape, a type the library takes (`supported`), whole 32-element blocks for quantized types.
bool check_tensor(const lethe_config& c, int32_t kind, int32_t layer, int32_t type, const void* data,
                  int64_t rows, int64_t cols, bool (*supported)(int32_t type));

// A cache and a layer index of it (`fn` names the entry point in the message).
bool check_kv_layer(const lethe_kv* kv, int32_t layer, int32_t n_layers, const char* fn);

// lethe_kv_write's rows: 0 <= n <= LETHE_MAX_LAYER_ROWS, data non-NULL when n > 0, positions >= 0.
bool check_rows(int32_t n, const float* k, const float* v, const int32_t* pos, const char* fn);

// keep[0..n): strictly ascending indices in [0, len).
bool check_keep(const int32_t* keep, int32_t n, int32_t len, const char* fn);

// Prune plans of `n_seq` caches (lethe.h, lethe_forward): keep_len[s·n_layers + l] = -1 (unchanged) or a count
// <= the layer's length, the kept indices of every compacted layer concatenated in keep_rows, each list
// checked by check_keep. keep_len NULL: no plan.
bool check_plans(int32_t n_seq, lethe_kv* const* kvs, int32_t n_layers, const int32_t* keep_len,
                 const int32_t* keep_rows, const char* fn);

// lethe_forward's arguments (everything but the model's readiness): n_seq >= 1, non-NULL arrays, distinct
// caches of model `m`, plans, n_tokens >= 1, start positions, logits modes, at most LETHE_MAX_STEP_TOKENS
// tokens in all, logits_out when logits are asked for, token ids < vocab, score windows >= 0 and finite
// decays >= 0. Sets the step's total tokens and logits rows.
bool check_forward(const lethe_model* m, const lethe_config& c, int32_t n_seq, lethe_kv** kvs,
                   const int32_t* keep_len, const int32_t* keep_rows, const int32_t* tokens,
                   const int32_t* n_tokens, const int32_t* start_pos, const int32_t* logits_mode,
                   const float* logits_out, const float* score_decay, const int32_t* score_window,
                   int64_t* n_total, int64_t* n_logits);

// pos[i] = pos[keep[i]] for i < n, in place (keep checked: keep[i] >= i, so a forward copy is safe).
void compact_positions(int32_t* pos, const int32_t* keep, int32_t n);

}  // namespace lethe_abi

#endif
