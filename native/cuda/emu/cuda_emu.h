// A host emulation of the small CUDA subset the Lethe kernels use, so that the very same kernel and ABI
// source (native/cuda/lethe_cuda.cu) can be compiled with g++ (-x c++ -DLETHE_EMU) and checked against the
// TypeScript reference on a machine without a GPU (tests/cuda_test.ts). Not a product path: slow on purpose
// simple.
//
// Model: a launch runs the grid's blocks one after another; a block's threads are ucontext fibers on the
// calling thread, run round-robin: each runs until its next __syncthreads (a barrier round ends when every
// fiber has reached it) or its end. __shfl_down_sync exchanges values through a per-block buffer between two
// barriers, with CUDA's semantics (a source lane past the warp returns the caller's own value). A fiber that
// finishes while others wait at a barrier (a divergent barrier) aborts. `__shared__` variables become
// function statics (one block runs at a time). Device memory is host memory; streams are synchronous.
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../f16.h"

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

using std::max;
using std::min;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct emu_uint3 {
  unsigned x, y, z;
};

inline emu_uint3 threadIdx{0, 0, 0};
inline emu_uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

namespace emu {
#if defined(__x86_64__)
// Minimal stack switch (System V x86-64: callee-saved rbx, rbp, r12-r15; no signal-mask syscalls).
extern "C" void lethe_emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl lethe_emu_switch
.type lethe_emu_switch,@function
lethe_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size lethe_emu_switch, .-lethe_emu_switch
)");
struct Fiber {
  void* sp = nullptr;
  std::vector<char> stack;
  bool done = false;
};
inline void* scheduler_sp = nullptr;
#else
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};
inline ucontext_t scheduler;
#endif
inline std::vector<Fiber> fibers;
inline unsigned current = 0;
inline const std::function<void()>* body = nullptr;
inline std::vector<float> shfl;
constexpr size_t STACK = 64 * 1024;
// Calls counted by name (kernel launches by the kernel's name, and the runtime calls that allocate or wait),
// read by the tests through lethe_emu_count.
inline std::map<std::string, int64_t> counts;

// Switch from fiber `current` back to the scheduler (a __syncthreads).
inline void yield_to_scheduler() {
#if defined(__x86_64__)
  lethe_emu_switch(&fibers[current].sp, scheduler_sp);
#else
  if (swapcontext(&fibers[current].ctx, &scheduler) != 0) abort();
#endif
}

inline void fiber_main() {
  (*body)();
  fibers[current].done = true;
#if defined(__x86_64__)
  lethe_emu_switch(&fibers[current].sp, scheduler_sp);
  abort();  // a finished fiber is never resumed
#endif
  // ucontext: returning resumes uc_link (the scheduler)
}

template <class F>
void launch(dim3 grid, dim3 block, F kernelBody) {
  const unsigned nt = block.x;
  if (nt == 0 || nt > 1024 || nt % 32 != 0 || block.y != 1 || block.z != 1) abort();
  blockDim = block;
  gridDim = grid;
  const std::function<void()> fn = kernelBody;
  body = &fn;
  fibers.resize(nt);
  for (auto& f : fibers) f.stack.resize(STACK);
  shfl.assign(nt, 0.f);
#if !defined(__x86_64__)
  ucontext_t tmpl;
  if (getcontext(&tmpl) != 0) abort();
#endif
  for (unsigned by = 0; by < grid.y; by++) {
    for (unsigned bx = 0; bx < grid.x; bx++) {
      blockIdx = {bx, by, 0};
      for (unsigned t = 0; t < nt; t++) {
        Fiber& f = fibers[t];
        f.done = false;
#if defined(__x86_64__)
        uintptr_t top = ((uintptr_t)(f.stack.data() + f.stack.size())) & ~(uintptr_t)15;
        void** sp = (void**)top;
        *--sp = nullptr;                      // fake return address of fiber_main (rsp % 16 == 8 at entry)
        *--sp = (void*)&fiber_main;           // popped by `ret`
        for (int i = 0; i < 6; i++) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
        f.sp = sp;
#else
        f.ctx = tmpl;
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_main, 0);
#endif
      }
      for (;;) {  // one barrier round per iteration
        unsigned finished = 0;
        for (unsigned t = 0; t < nt; t++) {
          current = t;
          threadIdx = {t, 0, 0};
#if defined(__x86_64__)
          lethe_emu_switch(&scheduler_sp, fibers[t].sp);
#else
          if (swapcontext(&scheduler, &fibers[t].ctx) != 0) abort();
#endif
          finished += fibers[t].done ? 1 : 0;
        }
        if (finished == nt) break;
        if (finished != 0) abort();  // divergent __syncthreads
      }
    }
  }
  body = nullptr;
}
}  // namespace emu

inline void __syncthreads() { emu::yield_to_scheduler(); }

// How often `what` (a kernel name such as "kv_compact_kernel", or "cudaMalloc", "cudaStreamSynchronize") ran.
extern "C" __attribute__((visibility("default"))) int64_t lethe_emu_count(const char* what) {
  auto it = emu::counts.find(what);
  return it == emu::counts.end() ? 0 : it->second;
}

inline float __shfl_down_sync(unsigned, float v, int off) {
  const unsigned t = threadIdx.x;
  emu::shfl[t] = v;
  __syncthreads();
  const float r = (threadIdx.x & 31) + off < 32 ? emu::shfl[threadIdx.x + off] : v;
  __syncthreads();
  return r;
}

// IEEE half as raw bits, with the conversions of cuda_fp16.h (host-callable there too).
struct __half {
  unsigned short x;
};
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
// f32 -> half, round to nearest even (cvt.rn.f16.f32; = JS Math.f16round): overflow to +-inf, subnormals kept,
// NaN stays NaN (quiet, payload truncated).
inline __half __float2half_rn(float f) { return __half{lethe_f32_to_f16(f)}; }
inline float __half2float(__half h) { return lethe_f16_to_f32(h.x); }
inline float __uint_as_float(unsigned int u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// ---- runtime API (synchronous, host memory)
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInvalidValue = 1 };
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3
};
typedef void* cudaStream_t;
#define cudaStreamNonBlocking 0x01
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  size_t totalGlobalMem;
};

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "invalid argument";
}
inline const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaSuccess                 ? "cudaSuccess"
         : e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation"
                                          : "cudaErrorInvalidValue";
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  emu::counts["cudaMalloc"]++;
  *p = malloc(bytes ? bytes : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  memset(*p, 0xff, bytes);  // NaN garbage: reading memory never written shows up in the results
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** p, size_t bytes) {  // the typed overload of cuda_runtime.h
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  if (n) memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t) {
  return cudaMemcpy(d, s, n, k);
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
  memset(d, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = (void*)1;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  emu::counts["cudaStreamSynchronize"]++;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  memset(p, 0, sizeof *p);
  strcpy(p->name, "host emulator");
  return cudaSuccess;
}
