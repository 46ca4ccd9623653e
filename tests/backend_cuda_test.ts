/**
 * The CUDA backend (native/cuda via lethe.h).
 *
 * Everywhere nvcc exists: the library compiles, loads with Deno.dlopen and, without a device or driver,
 * fails cleanly ("no CUDA device: …") from lethe_device_count, lethe_model_create and openCudaBackend.
 * The conformance suite (tests/support/conformance.ts) runs on the same sources compiled with g++ against
 * the host emulator of the CUDA subset they use (native/cuda/emu/cuda_emu.h; shorter runs: the emulator is
 * slow on purpose), and on a real device where one exists (device count > 0; else ignored, with the reason
 * printed), at the strict tolerances.
 */
import assert from "node:assert/strict";
import { Checker, conformance, EVERY_WEIGHT_CASE } from "./support/conformance.ts";
import { emulatedCudaLibrary } from "./support/cuda_emu.ts";
import { randomTokens, Rng, synthModel } from "./support/synthetic.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import type { SequenceKV } from "../src/kv/cache.ts";
import { buildNative, CUDA_LIB } from "../native/build.ts";
import { cudaLibraryPath, type CudaProbe, openCudaBackend, probeCuda } from "../src/engine/cuda.ts";
import { LETHE_ABI_VERSION, LETHE_SYMBOLS } from "../src/engine/native.ts";
import { config } from "./support/lethe_config.ts";
import { loadModel, SHARED_MODELS } from "../src/model/loader.ts";
import { GGMLType } from "../src/model/types.ts";

async function hasNvcc(): Promise<boolean> {
  try {
    return (await new Deno.Command("nvcc", { args: ["--version"], stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

const NVCC = await hasNvcc();
const built = NVCC ? (await buildNative()).find((r) => r.lib === "cuda") : undefined;
const libBuilt = built?.status === "built" || built?.status === "up-to-date";

function tryProbe(path: string): { probe?: CudaProbe; error: string } {
  try {
    return { probe: probeCuda(path), error: "" };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

// The library built here (for the build / no-device tests) ...
const local = libBuilt ? tryProbe(CUDA_LIB) : { probe: undefined, error: "library not built" };
const localNoDevice = (local.probe?.devices ?? -1) < 1;
// ... and the one the GPU tests use: env LETHE_CUDA_LIB (e.g. the host-emulated build, see
// native/cuda/emu/cuda_emu.h) or the same library.
const GPU_LIB = cudaLibraryPath();
const gpu = GPU_LIB === CUDA_LIB ? local : tryProbe(GPU_LIB);
const DEVICES = gpu.probe?.devices ?? -1;
const noGpu = DEVICES < 1;
if (!NVCC) {
  console.log("cuda: nvcc not found; the CUDA library is not built here (build and GPU tests ignored)");
} else if (!libBuilt) console.log(`cuda: build did not succeed: ${built?.message}`);
if (noGpu) {
  const why = gpu.probe?.error ?? (gpu.error || "library not built");
  console.log(`cuda: GPU tests ignored: ${why} (device count ${DEVICES}, ${GPU_LIB})`);
} else {
  console.log(`cuda: running GPU tests on ${gpu.probe!.info} (${GPU_LIB})`);
}

const STORIES = Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K;

function cstr(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

Deno.test({
  name: "cuda: liblethe_cuda.so compiles with nvcc and loads with Deno.dlopen",
  ignore: !NVCC,
  fn() {
    assert.ok(libBuilt, `CUDA build failed: ${built?.message}`);
    assert.ok(Deno.statSync(CUDA_LIB).isFile, `${CUDA_LIB} missing`);
    const lib = Deno.dlopen(CUDA_LIB, LETHE_SYMBOLS);
    assert.equal(lib.symbols.lethe_abi_version(), LETHE_ABI_VERSION);
    assert.match(cstr(lib.symbols.lethe_backend_info()), /^cuda/);
  },
});

Deno.test({
  name: "cuda: without a device, device count is -1 and model create / openCudaBackend fail cleanly",
  ignore: !libBuilt || !localNoDevice,
  async fn() {
    const lib = Deno.dlopen(CUDA_LIB, LETHE_SYMBOLS).symbols;
    assert.equal(lib.lethe_device_count(), -1);
    const err = cstr(lib.lethe_last_error());
    assert.match(err, /^no CUDA device: \S/, err);
    assert.match(cstr(lib.lethe_backend_info()), /^cuda \(no CUDA device: /);

    // A valid config fails on the missing device: NULL + the same kind of message.
    assert.equal(lib.lethe_model_create(config()), null);
    assert.match(cstr(lib.lethe_last_error()), /^no CUDA device: \S/);
    // A bad config is rejected first, with a message naming the problem.
    assert.equal(lib.lethe_model_create(config({ nHeads: 3, nKVHeads: 2 })), null);
    assert.match(cstr(lib.lethe_last_error()), /n_heads 3 is not a multiple of n_kv_heads 2/);
    assert.equal(lib.lethe_model_create(config({ headDim: 15 })), null);
    assert.match(cstr(lib.lethe_last_error()), /head_dim 15 must be even/);
    assert.equal(lib.lethe_model_create(config({ dim: -1 })), null);
    assert.match(cstr(lib.lethe_last_error()), /dimensions out of range/);
    assert.equal(lib.lethe_model_create(null), null);
    assert.match(cstr(lib.lethe_last_error()), /cfg is NULL/);
    for (const kvType of [2, -1]) {
      assert.equal(lib.lethe_model_create(config({ kvType })), null);
      assert.match(
        cstr(lib.lethe_last_error()),
        new RegExp(`unknown kv_type ${kvType} \\(0 = f32, 1 = f16\\)`),
      );
    }
    // f16 (kv_type 1) is a valid config: it too fails only on the missing device.
    assert.equal(lib.lethe_model_create(config({ kvType: 1 })), null);
    assert.match(cstr(lib.lethe_last_error()), /^no CUDA device: \S/);

    assert.equal(local.probe?.devices, -1);
    assert.match(local.probe?.error ?? "", /^no CUDA device: \S/);
    const model = await loadModel(STORIES);
    await assert.rejects(
      () => openCudaBackend(model.config, model.weights, { path: CUDA_LIB }),
      (e: Error) => e instanceof Error && /^no CUDA device: \S/.test(e.message),
    );
    // A missing library is a clear error too (not a crash).
    await assert.rejects(
      () => openCudaBackend(model.config, model.weights, { path: "/nonexistent/liblethe_cuda.so" }),
      /cuda backend unavailable: native library not found/,
    );
  },
});

const emu = await emulatedCudaLibrary();
if (!emu.path) console.log(`cuda: host-emulator tests ignored: ${emu.error}`);

Deno.test({
  name: "cuda (host emulator): the emulated library reports one device; kv_type is validated",
  ignore: !emu.path,
  fn() {
    const info = probeCuda(emu.path!);
    assert.equal(info.devices, 1);
    assert.match(info.info, /host emulator/);
    const lib = Deno.dlopen(emu.path!, LETHE_SYMBOLS);
    try {
      const sym = lib.symbols;
      for (const kvType of [2, -1, 0x10000]) {
        assert.equal(sym.lethe_model_create(config({ kvType })), null);
        assert.match(
          cstr(sym.lethe_last_error()),
          new RegExp(`unknown kv_type ${kvType} \\(0 = f32, 1 = f16\\)`),
        );
      }
      const m16 = sym.lethe_model_create(config({ kvType: 1 }));
      assert.notEqual(m16, null, cstr(sym.lethe_last_error()));
      sym.lethe_model_free(m16);
    } finally {
      lib.close();
    }
  },
});

conformance({
  name: "cuda (host emulator)",
  skip: emu.path ? null : emu.error ?? "not built",
  open: (config, weights, opts) => openCudaBackend(config, weights, { ...opts, path: emu.path }),
  steps: { decode: 4, types: 2, random: 12, short: 2 },
  golden: false,
  quantError: false,
  weightTypes: [
    { type: GGMLType.F16, rope: "half" },
    { type: GGMLType.BF16, rope: "interleaved" },
    { type: GGMLType.Q8_0, rope: "half" },
    { type: GGMLType.Q4_0, rope: "interleaved" },
  ],
});

conformance({
  name: "cuda (GPU)",
  skip: noGpu ? gpu.probe?.error ?? (gpu.error || "no CUDA device") : null,
  open: (config, weights, opts) => openCudaBackend(config, weights, { ...opts, path: GPU_LIB }),
  steps: { decode: 64, types: 6, random: 200, short: 10 },
  golden: true,
  quantError: true,
  weightTypes: EVERY_WEIGHT_CASE,
});

Deno.test({
  name:
    "cuda (host emulator): a step applies the prune plans of every layer of every sequence in one kernel launch, without allocating or waiting",
  ignore: !emu.path,
  async fn() {
    const lib = Deno.dlopen(emu.path!, { lethe_emu_count: { parameters: ["buffer"], result: "i64" } });
    const count = (what: string) =>
      Number(lib.symbols.lethe_emu_count(new TextEncoder().encode(what + "\0")));
    const counts = () => ({
      launches: count("kv_compact_kernel"),
      mallocs: count("cudaMalloc"),
      syncs: count("cudaStreamSynchronize"),
    });
    const delta = (a: ReturnType<typeof counts>) => {
      const b = counts();
      return { launches: b.launches - a.launches, mallocs: b.mallocs - a.mallocs, syncs: b.syncs - a.syncs };
    };
    const { config, weights } = synthModel({ rope: "half", bias: true, seed: 41, tied: false });
    const gpu = await openCudaBackend(config, weights, { path: emu.path });
    const ts = createTsBackend(config, weights);
    try {
      const L = config.nLayers;
      const kvs = [gpu.createKV(), gpu.createKV()], refs = [ts.createKV(), ts.createKV()];
      const every = (kv: SequenceKV, r: number) =>
        Array.from(
          { length: L },
          (_, l) => Int32Array.from({ length: kv.length(l) }, (_, j) => j).filter((j) => j % r),
        );
      const step = async (tokens: number[][], plans?: (kv: SequenceKV) => (Int32Array | null)[]) => {
        const inputs = kvs.map((kv, i) => ({
          kv,
          tokens: tokens[i],
          logits: "last" as const,
          compact: plans?.(kv),
        }));
        const od = await gpu.forward(inputs);
        const or = await ts.forward(inputs.map((x, i) => ({ ...x, kv: refs[i] })));
        od.forEach((o, i) => new Checker({}).step(o, or[i], config.nHeads, "f32", `seq ${i}`));
      };
      await step([randomTokens(new Rng(1), 11, 96), randomTokens(new Rng(2), 7, 96)]);
      await step([[5], [6]], (kv) => every(kv, 4));
      const before = counts();
      await step([[7], [8]], (kv) => every(kv, 3)); // every layer of both sequences
      assert.deepEqual(
        delta(before),
        { launches: 1, mallocs: 0, syncs: 1 },
        "one launch in the step's one wait",
      );
      for (const [i, kv] of kvs.entries()) new Checker({}).cache(kv.toHost(), refs[i].toHost(), `seq ${i}`);
      // Outside a step (a finished sequence's last plan): every layer in one launch too (the cache's plan
      // buffer is allocated once, on first use).
      kvs[0].compact(every(kvs[0], 5));
      refs[0].compact(every(refs[0], 5));
      const again = counts();
      const plan = every(kvs[0], 2);
      kvs[0].compact(plan);
      refs[0].compact(plan);
      assert.deepEqual(delta(again), { launches: 1, mallocs: 0, syncs: 1 });
      new Checker({}).cache(kvs[0].toHost(), refs[0].toHost(), "after compact()");
    } finally {
      gpu.dispose();
      lib.close();
    }
  },
});
