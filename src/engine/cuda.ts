/**
 * The CUDA backend: native/cuda (liblethe_cuda.so, built by `deno task build:native` where nvcc exists)
 * behind the same lethe.h FFI binding as the CPU library (src/engine/native.ts). Weights and each sequence's
 * KV cache live in device memory (f32 or, with kvPrecision "f16", IEEE-half rows); policies see the same
 * SequenceKV contract.
 *
 * Where the library is missing, or loads but finds no CUDA device/driver, `openCudaBackend` rejects with an
 * Error whose message says so ("no CUDA device: <CUDA's reason>"), so `auto` selection can fall back.
 */
import type { KVPrecision } from "./backend.ts";
import type { ModelConfig, ModelWeights } from "../model/types.ts";
import { type NativeBackend, nativeLibraryPath, openNativeBackend, probeNativeLibrary } from "./native.ts";

export interface CudaOptions {
  /** KV element precision (see BackendOptions): "f16" keeps the device K/V rows as IEEE half (kv_type 1). */
  kvPrecision?: KVPrecision;
  /** CUDA device ordinal (default 0). */
  device?: number;
  /** Explicit path of liblethe_cuda.so (default: env LETHE_CUDA_LIB, else native/build of this repo). */
  path?: string;
}

/** Where liblethe_cuda.so is looked for. */
export function cudaLibraryPath(path?: string): string {
  return path ?? Deno.env.get("LETHE_CUDA_LIB") ?? nativeLibraryPath("cuda");
}

export interface CudaProbe {
  /** Number of CUDA devices (> 0), or -1 when there is none / no driver. */
  devices: number;
  /** The library's description (device name and compute capability, or why there is none). */
  info: string;
  /** Why there is no device (set when devices < 1). */
  error?: string;
}

/** Loads the CUDA library and asks it for devices. Throws when the library is missing or cannot load. */
export function probeCuda(path?: string): CudaProbe {
  const p = probeNativeLibrary(cudaLibraryPath(path));
  if (p.devices < 1) {
    const why = p.error && p.error !== "unknown error" ? p.error : "no CUDA device";
    return {
      devices: -1,
      info: p.info,
      error: why.startsWith("no CUDA device") ? why : `no CUDA device: ${why}`,
    };
  }
  return { devices: p.devices, info: p.info };
}

/** Opens the CUDA backend; rejects with "no CUDA device: …" when no device or driver is present. */
export function openCudaBackend(
  config: ModelConfig,
  weights: ModelWeights,
  opts: CudaOptions = {},
): Promise<NativeBackend> {
  try {
    const path = cudaLibraryPath(opts.path);
    let probe: CudaProbe;
    try {
      probe = probeCuda(path);
    } catch (e) {
      throw new Error(`cuda backend unavailable: ${(e as Error).message}`);
    }
    if (probe.devices < 1) throw new Error(probe.error);
    const device = opts.device ?? 0;
    if (!Number.isInteger(device) || device < 0 || device >= probe.devices) {
      throw new Error(`no CUDA device: device ${device} requested, ${probe.devices} present`);
    }
    return Promise.resolve(
      openNativeBackend(config, weights, { lib: "cuda", path, device, kvPrecision: opts.kvPrecision }),
    );
  } catch (e) {
    return Promise.reject(e);
  }
}
