/** The CUDA library built for the host emulator, once per test process (shared by the test files using it). */
import { resolve } from "node:path";
import { REPO_ROOT } from "../../src/model/loader.ts";

/**
 * Compiles native/cuda/lethe_cuda.cu and native/common/abi.cpp with g++ against native/cuda/emu/cuda_emu.h (CUDA threads as fibers,
 * __syncthreads and warp shuffles emulated; 64-thread blocks, so multi-warp reductions are exercised) into a
 * temporary library (removed when the tests end; a loaded library stays mapped). Returns its path, or why it
 * could not be built.
 */
async function build(): Promise<{ path?: string; error?: string }> {
  const srcs = [
    resolve(REPO_ROOT, "native", "cuda", "lethe_cuda.cu"),
    resolve(REPO_ROOT, "native", "common", "abi.cpp"),
  ];
  const flags = [
    "-std=c++20",
    "-O2",
    "-x",
    "c++",
    "-DLETHE_EMU",
    "-DLETHE_BLOCK_OVERRIDE=64",
    // A 200-float attention budget: a step's rows are split into many chunks (multi-chunk attention + scores).
    "-DLETHE_ATT_BUDGET_FLOATS=200",
    "-fPIC",
    "-shared",
  ];
  try {
    const dir = await Deno.makeTempDir({ prefix: "lethe_cuda_emu_" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const path = `${dir}/liblethe_cuda_emu.so`;
    const out = await new Deno.Command("g++", {
      args: [...flags, "-o", path, ...srcs],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    if (!out.success) {
      return { error: new TextDecoder().decode(out.stderr).split("\n").slice(0, 10).join("\n") };
    }
    return { path };
  } catch (e) {
    return { error: `g++ not runnable: ${(e as Error).message}` };
  }
}

let built: Promise<{ path?: string; error?: string }> | undefined;

/** The emulated library's path, or why it could not be built (built on first use). */
export function emulatedCudaLibrary(): Promise<{ path?: string; error?: string }> {
  return built ??= build();
}
