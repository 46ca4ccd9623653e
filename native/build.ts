/**
 * Builds the native libraries into native/build/:
 * - liblethe_cpu.so from native/cpu/*.cpp with g++ (-O3 -march=native, or $LETHE_CPU_ARCH, -fopenmp -shared -fPIC);
 * - liblethe_cuda.so from native/cuda/*.cu with nvcc, when nvcc and CUDA sources exist.
 * Both link native/common/*.cpp (the shared half of the ABI: last error, argument validation).
 *
 * Skips a library whose sources (and flags) hash to the stamp of the last successful build. Missing
 * compilers are a warning (exit 0): the `auto` backend then falls back. A CUDA failure is reported but does
 * not fail the CPU build. Usage: deno task build:native [--force] [--cpu-only] [--quiet]
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";

const NATIVE_DIR = dirname(fileURLToPath(import.meta.url));
export const BUILD_DIR = join(NATIVE_DIR, "build");
export const CPU_LIB = join(BUILD_DIR, "liblethe_cpu.so");
export const CUDA_LIB = join(BUILD_DIR, "liblethe_cuda.so");
/** The sources both libraries link (native/common). */
export const COMMON_DIR = join(NATIVE_DIR, "common");

export interface BuildResult {
  lib: "cpu" | "cuda";
  status: "built" | "up-to-date" | "skipped" | "failed";
  path: string;
  message: string;
}

function listSources(dir: string, ext: string): string[] {
  try {
    return [...Deno.readDirSync(dir)]
      .filter((e) => e.isFile && e.name.endsWith(ext))
      .map((e) => join(dir, e.name))
      .sort();
  } catch {
    return [];
  }
}

function hashInputs(files: string[], args: string[]): string {
  const h = createHash("sha256");
  h.update(args.join("\0"));
  for (const f of files) {
    h.update(f);
    h.update(Deno.readFileSync(f));
  }
  return h.digest("hex");
}

async function hasCommand(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}

async function compile(
  lib: "cpu" | "cuda",
  compiler: string,
  sources: string[],
  deps: string[],
  flags: string[],
  out: string,
  force: boolean,
): Promise<BuildResult> {
  const args = [...flags, "-o", out, ...sources];
  const stamp = out + ".stamp";
  const hash = hashInputs([...sources, ...deps], [compiler, ...args]);
  if (!force) {
    try {
      if (Deno.readTextFileSync(stamp).trim() === hash && Deno.statSync(out).isFile) {
        return { lib, status: "up-to-date", path: out, message: `${out} is up to date` };
      }
    } catch { /* no stamp: build */ }
  }
  Deno.mkdirSync(BUILD_DIR, { recursive: true });
  const t0 = performance.now();
  const res = await new Deno.Command(compiler, { args, stdout: "piped", stderr: "piped" }).output();
  if (!res.success) {
    const err = new TextDecoder().decode(res.stderr).trim().split("\n").slice(0, 20).join("\n");
    return { lib, status: "failed", path: out, message: `${compiler} failed building ${out}:\n${err}` };
  }
  Deno.writeTextFileSync(stamp, hash + "\n");
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  return { lib, status: "built", path: out, message: `built ${out} in ${secs}s` };
}

/** Builds what can be built here. Never throws for a missing compiler or a failed CUDA build. */
export async function buildNative(opts: { force?: boolean; cpuOnly?: boolean } = {}): Promise<BuildResult[]> {
  const results: BuildResult[] = [];
  const header = join(NATIVE_DIR, "lethe.h");
  const f16 = join(NATIVE_DIR, "f16.h");
  const commonSources = listSources(COMMON_DIR, ".cpp");
  const commonDeps = listSources(COMMON_DIR, ".h");
  const cpuDir = join(NATIVE_DIR, "cpu");
  const cpuOwn = listSources(cpuDir, ".cpp");
  const cpuSources = cpuOwn.length ? [...cpuOwn, ...commonSources] : [];
  const cpuDeps = [header, f16, ...commonDeps, ...listSources(cpuDir, ".h")];
  if (cpuOwn.length === 0) {
    results.push({ lib: "cpu", status: "skipped", path: CPU_LIB, message: "no native/cpu/*.cpp sources" });
  } else if (!(await hasCommand("g++"))) {
    results.push({
      lib: "cpu",
      status: "skipped",
      path: CPU_LIB,
      message: "warning: g++ not found; native CPU backend not built (the auto backend falls back)",
    });
  } else {
    // -march=native for the machine that runs it; an image built for others names a portable level.
    const march = Deno.env.get("LETHE_CPU_ARCH") || "native";
    const flags = ["-O3", `-march=${march}`, "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-Wall"];
    results.push(await compile("cpu", "g++", cpuSources, cpuDeps, flags, CPU_LIB, opts.force ?? false));
  }
  if (opts.cpuOnly) return results;
  const cudaDir = join(NATIVE_DIR, "cuda");
  const cudaOwn = listSources(cudaDir, ".cu");
  const cudaSources = [...cudaOwn, ...commonSources];
  if (cudaOwn.length === 0) {
    results.push({ lib: "cuda", status: "skipped", path: CUDA_LIB, message: "no native/cuda/*.cu sources" });
  } else if (!(await hasCommand("nvcc"))) {
    results.push({
      lib: "cuda",
      status: "skipped",
      path: CUDA_LIB,
      message: "nvcc not found; CUDA not built",
    });
  } else {
    const cudaDeps = [
      header,
      f16,
      ...commonDeps,
      ...listSources(cudaDir, ".h"),
      ...listSources(cudaDir, ".cuh"),
    ];
    const flags = ["-O3", "-shared", "-Xcompiler", "-fPIC", "-std=c++17", ...nvccArchFlags()];
    results.push(await compile("cuda", "nvcc", cudaSources, cudaDeps, flags, CUDA_LIB, opts.force ?? false));
  }
  return results;
}

/**
 * Real GPU code for every architecture nvcc 13 still supports from Turing on (sm_75 is its minimum), plus
 * compute_90 PTX so newer GPUs JIT-compile at first load. LETHE_CUDA_ARCH="80,90" narrows the list.
 */
export const CUDA_ARCHS = ["75", "80", "86", "89", "90", "120"];

function nvccArchFlags(): string[] {
  const env = Deno.env.get("LETHE_CUDA_ARCH");
  const archs = env
    ? env.split(",").map((a) => a.trim().replace(/^(sm_|compute_)/, "")).filter(Boolean)
    : CUDA_ARCHS;
  for (const a of archs) {
    if (!/^\d{2,3}[af]?$/.test(a)) {
      throw new Error(`LETHE_CUDA_ARCH: "${a}" is not an architecture like 80 or sm_90`);
    }
  }
  const flags = archs.flatMap((a) => ["-gencode", `arch=compute_${a},code=sm_${a}`]);
  const ptx = env ? archs[archs.length - 1] : "90";
  return [...flags, "-gencode", `arch=compute_${ptx},code=compute_${ptx}`];
}

if (import.meta.main) {
  const args = new Set(Deno.args);
  const results = await buildNative({ force: args.has("--force"), cpuOnly: args.has("--cpu-only") });
  let cpuFailed = false;
  for (const r of results) {
    const prefix = r.status === "failed" ? "error" : r.lib;
    if (r.status === "failed") {
      console.error(`${prefix}: ${r.message}`);
      if (r.lib === "cpu") cpuFailed = true;
    } else if (!args.has("--quiet") || r.status === "built") {
      console.log(`${r.lib}: ${r.message}`);
    }
  }
  Deno.exit(cpuFailed ? 1 : 0);
}
