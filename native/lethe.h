/*
 * lethe.h: the one C ABI of the Lethe Edge native backends.
 *
 * Implemented by the CPU library (native/cpu, liblethe_cpu.so) and the CUDA library (native/cuda,
 * liblethe_cuda.so); loaded from TypeScript with Deno.dlopen (src/engine/native.ts).
 *
 * Conventions
 * - Handle based: the library owns the weights (copied in by lethe_model_set_tensor) and the KV memory
 *   (lethe_kv, device memory on CUDA).
 * - Every int-returning function returns 0 on success and nonzero on error; pointer-returning functions
 *   return NULL on error. lethe_last_error() then describes the last error (process-wide, since calls may run on
 *   worker threads; never NULL).
 * - Matrices are row-major, outermost first: a linear layer `in -> out` is [out rows x in cols].
 * - A sequence's KV cache holds, per layer, rows of nKV*headDim values for K (RoPE applied) and V, plus the
 *   original position of each row; values are f32 or f16 (lethe_config.kv_type), always exchanged as f32.
 *   Layers may hold different numbers of rows after compaction.
 * - Not thread-safe per handle: one forward at a time per model; a kv must be used by one forward at a time.
 */
#ifndef LETHE_H
#define LETHE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LETHE_API __declspec(dllexport)
#else
#define LETHE_API __attribute__((visibility("default")))
#endif

#define LETHE_ABI_VERSION 2

/*
 * Limits, the same in every library (native/common/abi.cpp checks them):
 * - LETHE_MAX_STEP_TOKENS tokens in one lethe_forward over all sequences: under the CUDA matmul grid's
 *   65535 blocks of 8 rows (524,280), and far above any useful step (prefill is chunked, 256 tokens by default).
 * - LETHE_MAX_LAYER_ROWS rows in one layer of a cache (lethe_kv_write).
 * - LETHE_MAX_HEAD_DIM: the CUDA attention kernel keeps a query head in shared memory; real models use <= 256.
 * - LETHE_MAX_HEADS: query heads are the CUDA attention grid's y dimension (65535).
 * - LETHE_MAX_DIM bounds dim, ffn_dim and n_heads*head_dim; LETHE_MAX_VOCAB the vocabulary; LETHE_MAX_LAYERS
 *   the layers.
 */
#define LETHE_MAX_STEP_TOKENS (1 << 18)
#define LETHE_MAX_LAYER_ROWS (1 << 26)
#define LETHE_MAX_HEAD_DIM 1024
#define LETHE_MAX_HEADS 65535
#define LETHE_MAX_DIM (1 << 20)
#define LETHE_MAX_VOCAB (1 << 24)
#define LETHE_MAX_LAYERS 4096

/* ggml element types accepted by lethe_model_set_tensor (the GGUF ids). */
enum lethe_ggml_type {
  LETHE_TYPE_F32 = 0,
  LETHE_TYPE_F16 = 1,
  LETHE_TYPE_Q4_0 = 2,
  LETHE_TYPE_Q8_0 = 8,
  LETHE_TYPE_BF16 = 30,
};

/* Tensor kinds. Per-layer kinds use `layer` in [0, n_layers); global kinds ignore it (pass 0). */
enum lethe_tensor_kind {
  LETHE_TOK_EMBD = 0, /* [vocab, dim] */
  LETHE_ATTN_NORM = 1, /* [dim] (rows=1, cols=dim) */
  LETHE_WQ = 2, /* [n_heads*head_dim, dim] */
  LETHE_WK = 3, /* [n_kv_heads*head_dim, dim] */
  LETHE_WV = 4, /* [n_kv_heads*head_dim, dim] */
  LETHE_WO = 5, /* [dim, n_heads*head_dim] */
  LETHE_BQ = 6, /* [n_heads*head_dim] optional */
  LETHE_BK = 7, /* [n_kv_heads*head_dim] optional */
  LETHE_BV = 8, /* [n_kv_heads*head_dim] optional */
  LETHE_FFN_NORM = 9, /* [dim] */
  LETHE_W_GATE = 10, /* [ffn, dim] */
  LETHE_W_UP = 11, /* [ffn, dim] */
  LETHE_W_DOWN = 12, /* [dim, ffn] */
  LETHE_OUT_NORM = 13, /* [dim] */
  LETHE_OUTPUT = 14, /* [vocab, dim] */
  LETHE_TENSOR_KIND_COUNT = 15
};

/* Rope styles. */
#define LETHE_ROPE_INTERLEAVED 0 /* pairs (x[2i], x[2i+1]); llama.cpp NORM; llama2.c */
#define LETHE_ROPE_HALF 1 /* pairs (x[i], x[i+d/2]); HF rotate_half; llama.cpp NEOX */

/* Model hyper-parameters. All fields int32/float so the struct is 4-byte packed (14 x 4 = 56 bytes).
 * model_create rejects values outside the limits above, an unknown rope_style or kv_type. */
typedef struct lethe_config {
  int32_t dim;
  int32_t n_layers;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t ffn_dim;
  int32_t vocab_size;
  float norm_eps;
  float rope_theta;
  int32_t rope_style; /* LETHE_ROPE_* */
  int32_t max_threads; /* 0 = library default (all cores); 1 = single-threaded */
  int32_t device; /* CUDA device ordinal; ignored by the CPU library */
  int32_t kv_type; /* LETHE_KV_*: element type of the KV cache rows (was `reserved`, 0 = f32) */
  int32_t parallel_work; /* CPU: multiply-adds below which a matmul or attention runs on one thread, for this
                            model only (0 = library default); ignored by the CUDA library */
} lethe_config;

/*
 * KV cache element types (lethe_config.kv_type).
 * LETHE_KV_F16: K/V rows are stored as IEEE half (uint16), rounded from f32 with round-to-nearest-even (exactly
 * like JS Math.f16round: overflow to +-inf, subnormals kept) when a row is appended by lethe_forward or
 * written by lethe_kv_write. lethe_kv_read still returns f32 (exactly the stored f16 values) and
 * lethe_kv_bytes counts 2 bytes per element. Attention reads the f16 rows (converted to f32 in registers).
 */
#define LETHE_KV_F32 0
#define LETHE_KV_F16 1

typedef struct lethe_model lethe_model;
typedef struct lethe_kv lethe_kv;

/* ---- model ---- */

/* Validates cfg and allocates an empty model. NULL on error. */
LETHE_API lethe_model* lethe_model_create(const lethe_config* cfg);

/*
 * Copies one tensor into the model. `data` holds rows*cols elements in `ggml_type`'s encoding (quantized
 * types: cols must be a multiple of 32, each row is cols/32 blocks). Vectors use rows=1.
 * The library may convert to its preferred internal type (e.g. norms/biases to f32, BF16 to f32).
 * All required tensors must be set before the first forward (biases are optional).
 */
LETHE_API int lethe_model_set_tensor(lethe_model* m, int32_t kind, int32_t layer, int32_t ggml_type,
                                     const void* data, int64_t rows, int64_t cols);

LETHE_API void lethe_model_free(lethe_model* m);

/* ---- KV cache of one sequence ---- */

LETHE_API lethe_kv* lethe_kv_create(lethe_model* m);
LETHE_API void lethe_kv_free(lethe_kv* kv);

/* Number of cached rows of `layer`, or -1 on a bad layer. */
LETHE_API int32_t lethe_kv_len(lethe_kv* kv, int32_t layer);

/*
 * Apply a prune plan to kv now, every layer at once (one kernel launch on CUDA), outside a forward:
 *   keep_len[l]   -1: layer l unchanged; else the number of rows it keeps.
 *   keep_rows     the kept row indices of every layer with keep_len[l] >= 0, concatenated in layer order; each
 *                 layer's list strictly ascending, each < the layer's length. May be NULL if no count is > 0.
 * Kept rows keep their order and positions. The whole plan is checked first: on error nothing changes.
 */
LETHE_API int32_t lethe_kv_compact(lethe_kv* kv, const int32_t* keep_len, const int32_t* keep_rows);

/*
 * Export a layer: k, v sized len*n_kv_heads*head_dim floats, pos sized len int32 (any may be NULL to
 * skip). Layout = HostKVCache rows: [len x nKV*headDim] f32, RoPE applied, original positions.
 */
LETHE_API int32_t lethe_kv_read(lethe_kv* kv, int32_t layer, float* k, float* v, int32_t* pos);

/* Replace a layer's contents with n rows in the layout of lethe_kv_read (rounded to f16 with LETHE_KV_F16);
 * positions must be >= 0. */
LETHE_API int32_t lethe_kv_write(lethe_kv* kv, int32_t layer, const float* k, const float* v,
                                 const int32_t* pos, int32_t n);

/* Bytes of K/V held for the kept rows over all layers (not capacity): rows * kv_dim * 2 * (4 or 2). */
LETHE_API int64_t lethe_kv_bytes(lethe_kv* kv);

/* ---- forward ---- */

/*
 * One step for n_seq independent sequences.
 *   kvs[s]            the cache of sequence s (distinct handles).
 *   keep_len, keep_rows  prune plans, applied to the caches before anything else (as lethe_kv_compact, index
 *                     s*n_layers + l of keep_len; keep_rows concatenated in that order); every sequence's
 *                     layer lengths below are the lengths after its plan. keep_len NULL: no plan.
 *                     All plans of the step are applied together (one kernel launch on CUDA).
 *   tokens            all new tokens, concatenated in batch order (sum n_tokens[s] entries).
 *   n_tokens[s]       >= 1 new tokens of sequence s.
 *   start_pos[s]      position of the first new token of s (new token t gets start_pos[s] + t).
 *   logits_mode[s]    0 none, 1 last token, 2 all new tokens.
 *   logits_out        packed in batch order: for each s, (mode 1: 1, mode 2: n_tokens[s], 0: 0) rows of
 *                     vocab floats. May be NULL if every mode is 0.
 *   score_decay[s], score_window[s]  (window 0 = no scores for s; decay finite and >= 0); either array may be
 *                     NULL = no scores.
 *   scores_out        n_seq*n_layers pointers, index s*n_layers + l, each sized to that layer's length after
 *                     this step's append, or NULL where none. Query t of T contributes
 *                     decay^(T-1-t) if t >= T - window, times its attention probability on each cached row
 *                     summed over all query heads of the layer. Fully overwritten (not accumulated).
 * All tokens go through every matmul as one [N_total x dim] batch; attention is per sequence over its own
 * cache (rows from before this step, then the step's new tokens causally). Every argument (plans included) is
 * checked before anything runs: a bad argument changes no cache.
 */
LETHE_API int32_t lethe_forward(lethe_model* m, int32_t n_seq, lethe_kv** kvs, const int32_t* keep_len,
                                const int32_t* keep_rows, const int32_t* tokens, const int32_t* n_tokens,
                                const int32_t* start_pos, const int32_t* logits_mode, float* logits_out,
                                const float* score_decay, const int32_t* score_window, float** scores_out);

/* ---- info ---- */

LETHE_API const char* lethe_last_error(void);
/* CPU: 1. CUDA: cudaGetDeviceCount, or -1 with lethe_last_error set. */
LETHE_API int32_t lethe_device_count(void);
/* Static string: backend, SIMD / device, threads. */
LETHE_API const char* lethe_backend_info(void);
/* LETHE_ABI_VERSION of the library. */
LETHE_API int32_t lethe_abi_version(void);

#ifdef __cplusplus
}
#endif

#endif /* LETHE_H */
