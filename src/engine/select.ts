/**
 * Backend selection: `--backend auto|ts|native|webgpu|cuda`. `auto` tries the fastest backends first and
 * explains its choice (and why the faster ones were passed over) in `reason`.
 */
import type { Backend, BackendName, BackendOptions } from "./backend.ts";
import type { ModelConfig, ModelWeights } from "../model/types.ts";
import { createTsBackend } from "./ts/backend.ts";

export type BackendChoice = BackendName | "auto";
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "ts", "native", "webgpu", "cuda"];

export interface OpenedBackend {
  backend: Backend;
  reason: string;
}

interface ModelLike {
  config: ModelConfig;
  weights: ModelWeights;
}

async function openNamed(name: BackendName, m: ModelLike, opts: BackendOptions): Promise<Backend> {
  switch (name) {
    case "ts":
      return createTsBackend(m.config, m.weights, opts);
    case "native": {
      const { openNativeBackend } = await import("./native.ts");
      return await openNativeBackend(m.config, m.weights, { ...opts, lib: "cpu" });
    }
    case "cuda": {
      const { openCudaBackend } = await import("./cuda.ts");
      return await openCudaBackend(m.config, m.weights, opts);
    }
    case "webgpu": {
      const { openWebGPUBackend } = await import("./webgpu/backend.ts");
      return await openWebGPUBackend(m.config, m.weights, opts);
    }
  }
}

/** Is there a WebGPU adapter backed by real hardware (not a CPU rasterizer such as lavapipe/llvmpipe)? */
async function hardwareGpu(): Promise<string | null> {
  const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  if (!gpu) return null;
  try {
    const adapter = await gpu.requestAdapter() as
      | { isFallbackAdapter?: boolean; info?: { vendor?: string; device?: string; description?: string } }
      | null;
    if (!adapter || adapter.isFallbackAdapter) return null;
    const text = `${adapter.info?.vendor ?? ""} ${adapter.info?.device ?? ""} ${
      adapter.info?.description ?? ""
    }`;
    if (/llvmpipe|lavapipe|swiftshader|software|cpu/i.test(text)) return null;
    return text.trim() || "unknown GPU";
  } catch {
    return null;
  }
}

export async function openBackend(
  m: ModelLike,
  choice: BackendChoice = "auto",
  opts: BackendOptions = {},
): Promise<OpenedBackend> {
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new Error(`unknown backend "${choice}" (choose one of ${BACKEND_CHOICES.join(", ")})`);
  }
  if (choice !== "auto") {
    return { backend: await openNamed(choice, m, opts), reason: `requested --backend ${choice}` };
  }
  const passed: string[] = [];
  const first = (e: unknown) => String((e as Error)?.message ?? e).split("\n")[0];
  try {
    return { backend: await openNamed("cuda", m, opts), reason: "auto: a CUDA device is available" };
  } catch (e) {
    passed.push(`cuda: ${first(e)}`);
  }
  const gpu = await hardwareGpu();
  if (gpu) {
    try {
      return {
        backend: await openNamed("webgpu", m, opts),
        reason: `auto: hardware WebGPU adapter (${gpu})`,
      };
    } catch (e) {
      passed.push(`webgpu: ${first(e)}`);
    }
  } else {
    passed.push("webgpu: no hardware adapter (a CPU rasterizer is slower than native)");
  }
  try {
    return {
      backend: await openNamed("native", m, opts),
      reason: `auto: native CPU library (${passed.join("; ")})`,
    };
  } catch (e) {
    passed.push(`native: ${first(e)}`);
  }
  return {
    backend: createTsBackend(m.config, m.weights, opts),
    reason: `auto: TypeScript reference (${passed.join("; ")})`,
  };
}
