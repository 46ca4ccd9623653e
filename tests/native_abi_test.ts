/**
 * lethe.h's argument validation is one piece (native/common/abi.cpp) linked into both libraries: every bad
 * argument gets the same error from the CPU library, the CUDA library built for the host emulator and (for the
 * configuration, which is checked before any device) the real CUDA library built here, with lethe.h's one set
 * of limits, and a rejected call changes nothing.
 */
import assert from "node:assert/strict";
import { buildNative, CPU_LIB, CUDA_LIB } from "../native/build.ts";
import { emulatedCudaLibrary } from "./support/cuda_emu.ts";
import { LETHE_ABI_VERSION, LETHE_SYMBOLS, type LetheConfig } from "../src/engine/native.ts";
import { config } from "./support/lethe_config.ts";

type Lib = Deno.DynamicLibrary<typeof LETHE_SYMBOLS>["symbols"];

const LIMITS = { maxStepTokens: 1 << 18, maxHeadDim: 1024, maxDim: 1 << 20 }; // lethe.h

const cpuBuilt = (await buildNative({ cpuOnly: true }))[0];
const emu = await emulatedCudaLibrary();
let cudaBuilt = false;
try {
  cudaBuilt = Deno.statSync(CUDA_LIB).isFile;
} catch { /* not built here */ }

function open(path: string): Lib {
  return Deno.dlopen(path, LETHE_SYMBOLS).symbols; // kept open: the libraries hold OpenMP threads
}

const libs: [string, Lib][] = [];
if (cpuBuilt.status === "built" || cpuBuilt.status === "up-to-date") libs.push(["cpu", open(CPU_LIB)]);
if (emu.path) libs.push(["cuda (host emulator)", open(emu.path)]);
const withDevice = libs.slice(); // the ones that create models here
if (cudaBuilt) libs.push(["cuda", open(CUDA_LIB)]);

function lastError(lib: Lib): string {
  const p = lib.lethe_last_error();
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** Runs `call` on every library: each fails with the same message, which matches `want`. */
function sameError(on: [string, Lib][], what: string, call: (lib: Lib) => unknown, want: RegExp): void {
  const msgs = on.map(([name, lib]) => {
    const r = call(lib);
    assert.ok(r === null || r === 1 || r === -1, `${name}: ${what} should fail, returned ${r}`);
    return [name, lastError(lib)];
  });
  for (const [name, m] of msgs) assert.match(m, want, `${name}: ${what}`);
  for (const [name, m] of msgs.slice(1)) assert.equal(m, msgs[0][1], `${name} and ${msgs[0][0]}: ${what}`);
}

Deno.test({
  name: "lethe.h: every library speaks ABI 2 and refuses the same bad configurations with the same words",
  ignore: libs.length < 2,
  fn() {
    for (const [name, lib] of libs) assert.equal(lib.lethe_abi_version(), LETHE_ABI_VERSION, name);
    const table: [Partial<LetheConfig> | null, RegExp][] = [
      [null, /^lethe_model_create: cfg is NULL$/],
      [{ dim: -1 }, /dimensions out of range/],
      [{ nLayers: 0 }, /dimensions out of range/],
      [{ headDim: LIMITS.maxHeadDim + 2, nHeads: 2, nKVHeads: 2 }, /dimensions out of range/],
      [{ ffnDim: LIMITS.maxDim + 1 }, /dimensions out of range/],
      [{ nHeads: 3, nKVHeads: 2 }, /n_heads 3 is not a multiple of n_kv_heads 2/],
      [{ headDim: 15 }, /head_dim 15 must be even/],
      [{ ropeStyle: 2 }, /unknown rope_style 2/],
      [{ normEps: NaN }, /bad norm_eps/],
      [{ ropeTheta: 0 }, /bad norm_eps .* or rope_theta 0/],
      [{ kvType: 2 }, /unknown kv_type 2 \(0 = f32, 1 = f16\)/],
      [{ parallelWork: -1 }, /parallel_work -1 must be >= 0/],
      [{ device: -1 }, /device -1 .* must be >= 0/],
    ];
    for (const [c, want] of table) {
      sameError(libs, JSON.stringify(c), (lib) => lib.lethe_model_create(c ? config(c) : null), want);
    }
  },
});

Deno.test({
  name: "lethe.h: bad tensors, KV calls and prune plans get the same errors and change nothing",
  ignore: withDevice.length < 2,
  fn() {
    const models = withDevice.map(([, lib]) => lib.lethe_model_create(config()));
    models.forEach((m, i) => assert.notEqual(m, null, lastError(withDevice[i][1])));
    const each = (f: (lib: Lib, m: Deno.PointerObject) => unknown) => (lib: Lib) =>
      f(lib, models[withDevice.findIndex(([, l]) => l === lib)]!);
    const data = new Uint8Array(64 * 96 * 4);
    const set = (kind: number, layer: number, type: number, rows: number, cols: number) =>
      each((lib, m) => lib.lethe_model_set_tensor(m, kind, layer, type, data, BigInt(rows), BigInt(cols)));
    sameError(withDevice, "kind 99", set(99, 0, 0, 1, 64), /unknown tensor kind 99/);
    sameError(withDevice, "layer 2", set(2, 2, 0, 64, 64), /wq: layer 2 out of range \[0, 2\)/);
    sameError(withDevice, "wk shape", set(3, 0, 0, 64, 64), /wk: shape \[64, 64\], expected \[32, 64\]/);
    sameError(
      withDevice,
      "a norm as [64, 1]",
      set(1, 0, 0, 64, 1),
      /attn_norm: shape \[64, 1\], expected \[1, 64\]/,
    );
    sameError(withDevice, "type 3", set(2, 0, 3, 64, 64), /wq: unsupported ggml type 3/);
    sameError(
      withDevice,
      "data NULL",
      each((lib, m) => lib.lethe_model_set_tensor(m, 2, 0, 0, null, 64n, 64n)),
      /wq: data is NULL/,
    );

    // a cache with 3 rows in each layer
    const kvs = withDevice.map(([, lib], i) => lib.lethe_kv_create(models[i]!)!);
    const kvOf = (lib: Lib) => kvs[withDevice.findIndex(([, l]) => l === lib)];
    const rows = new Float32Array(3 * 32).fill(0.5), pos = Int32Array.of(0, 1, 2);
    for (const [i, [, lib]] of withDevice.entries()) {
      for (const l of [0, 1]) {
        assert.equal(lib.lethe_kv_write(kvs[i], l, rows, rows, pos, 3), 0, lastError(lib));
      }
    }
    sameError(
      withDevice,
      "kv_len layer 9",
      (lib) => lib.lethe_kv_len(kvOf(lib), 9),
      /lethe_kv_len: layer 9 out of range \[0, 2\)/,
    );
    sameError(
      withDevice,
      "kv_write n -1",
      (lib) => lib.lethe_kv_write(kvOf(lib), 0, rows, rows, pos, -1),
      /lethe_kv_write: bad row count -1/,
    );
    sameError(
      withDevice,
      "kv_write negative position",
      (lib) => lib.lethe_kv_write(kvOf(lib), 0, rows, rows, Int32Array.of(0, -4, 2), 3),
      /lethe_kv_write: negative position -4 at row 1/,
    );
    const compact = (lens: number[], keep: number[]) => (lib: Lib) =>
      lib.lethe_kv_compact(kvOf(lib), Int32Array.from(lens), Int32Array.from(keep.length ? keep : [0]));
    sameError(
      withDevice,
      "keep_len NULL",
      (lib) => lib.lethe_kv_compact(kvOf(lib), null, null),
      /keep_len is NULL/,
    );
    sameError(
      withDevice,
      "keep 5 of 3",
      compact([-1, 5], [0, 1, 2, 3, 4]),
      /lethe_kv_compact: keeps 5 rows of 3/,
    );
    sameError(withDevice, "not ascending", compact([2, -1], [1, 1]), /strictly ascending in \[0, 3\), got 1/);
    sameError(
      withDevice,
      "out of range",
      compact([1, 2], [0, 0, 3]),
      /strictly ascending in \[0, 3\), got 3/,
    );
    for (const [, lib] of withDevice) {
      assert.deepEqual(
        [lib.lethe_kv_len(kvOf(lib), 0), lib.lethe_kv_len(kvOf(lib), 1)],
        [3, 3],
        "nothing changed",
      );
    }

    // lethe_forward: arguments are checked (the same way) before the model's tensors are
    const fwd = (o: {
      nSeq?: number;
      kvs?: Deno.PointerObject[];
      keepLen?: number[];
      keep?: number[];
      tokens?: Int32Array | null;
      nTokens?: number[];
      start?: number[];
      mode?: number[];
      decay?: number[];
      window?: number[];
    }) =>
    (lib: Lib) => {
      const ks = o.kvs ?? [kvOf(lib)];
      const ptrs = new BigUint64Array(ks.map((k) => BigInt(Deno.UnsafePointer.value(k))));
      const n = ks.length;
      return lib.lethe_forward(
        models[withDevice.findIndex(([, l]) => l === lib)],
        o.nSeq ?? n,
        ptrs,
        o.keepLen ? Int32Array.from(o.keepLen) : null,
        o.keep ? Int32Array.from(o.keep) : null,
        o.tokens === undefined ? Int32Array.of(1) : o.tokens,
        Int32Array.from(o.nTokens ?? [1]),
        Int32Array.from(o.start ?? [3]),
        Int32Array.from(o.mode ?? [0]),
        null,
        o.decay ? Float32Array.from(o.decay) : null,
        o.window ? Int32Array.from(o.window) : null,
        null,
      );
    };
    sameError(withDevice, "n_seq 0", fwd({ nSeq: 0 }), /n_seq must be >= 1, got 0/);
    sameError(withDevice, "tokens NULL", fwd({ tokens: null }), /must be non-NULL/);
    sameError(
      withDevice,
      "token 32",
      fwd({ tokens: Int32Array.of(32) }),
      /token id 32 out of range \[0, 32\)/,
    );
    sameError(withDevice, "start -1", fwd({ start: [-1] }), /start_pos\[0\] = -1 out of range/);
    sameError(withDevice, "logits mode 3", fwd({ mode: [3] }), /logits_mode\[0\] = 3/);
    sameError(withDevice, "logits without a buffer", fwd({ mode: [1] }), /logits_out is NULL/);
    sameError(
      withDevice,
      "window -1",
      fwd({ decay: [1], window: [-1] }),
      /score_window\[0\] = -1 is negative/,
    );
    sameError(withDevice, "decay NaN", fwd({ decay: [NaN], window: [1] }), /score_decay\[0\] = nan/);
    sameError(
      withDevice,
      "cache twice",
      (lib) =>
        fwd({
          kvs: [kvOf(lib), kvOf(lib)],
          nTokens: [1, 1],
          start: [3, 3],
          mode: [0, 0],
          tokens: Int32Array.of(1, 1),
        })(lib),
      /kvs\[1\] appears twice/,
    );
    sameError(
      withDevice,
      "bad plan",
      fwd({ keepLen: [2, -1], keep: [2, 1] }),
      /lethe_forward: keep indices must be strictly ascending in \[0, 3\), got 1/,
    );
    const many = LIMITS.maxStepTokens + 1;
    sameError(
      withDevice,
      "too many tokens",
      fwd({ tokens: new Int32Array(many), nTokens: [many] }),
      new RegExp(`more than ${LIMITS.maxStepTokens} tokens in one step`),
    );
    for (const [, lib] of withDevice) {
      assert.deepEqual(
        [lib.lethe_kv_len(kvOf(lib), 0), lib.lethe_kv_len(kvOf(lib), 1)],
        [3, 3],
        "nothing changed",
      );
    }
    // a valid plan through lethe_kv_compact: both layers at once
    for (const [, lib] of withDevice) {
      assert.equal(compact([2, 1], [0, 2, 1])(lib), 0, lastError(lib));
      assert.deepEqual([lib.lethe_kv_len(kvOf(lib), 0), lib.lethe_kv_len(kvOf(lib), 1)], [2, 1]);
    }
    withDevice.forEach(([, lib], i) => {
      lib.lethe_kv_free(kvs[i]);
      lib.lethe_model_free(models[i]);
    });
  },
});
