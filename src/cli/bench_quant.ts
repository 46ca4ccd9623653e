/**
 * deno task bench:quant — throughput of the TypeScript block codecs (the reference backend's load time and
 * `quantize`'s run time), side by side in one run.
 *
 * Per type: dequantize and quantize rates on one thread over seeded normal data (by process CPU time), with dequantize also as a
 * fraction of a plain float32 copy of the same output measured in the same run. With --model: the time to
 * read a GGUF and dequantize every tensor (what the ts backend does at load), and with --type also the time
 * to quantize it with the worker pool (wall and process CPU seconds, so a busy machine shows as the gap).
 */
import { intFlag, parseFlags, runMain, UsageError } from "./common.ts";
import { dequantize, GGML_TYPES, ggmlTypeFromName, ggmlTypeName, quantize } from "../model/ggml.ts";
import { readGGUFFile, tensorBytes } from "../model/gguf.ts";
import { quantizeGGUF } from "./quantize.ts";
import { fileTypeByName } from "../model/quant/mix.ts";

const BLOCK_TYPES = Object.entries(GGML_TYPES).filter(([, t]) => t.quantize && t.blockSize > 1).map(([, t]) =>
  t.name
);

const USAGE = `usage: deno task bench:quant [options]
  --elements N     elements per type (default 1048576, a multiple of 256)
  --types LIST     block types (default ${BLOCK_TYPES.join(",")})
  --model FILE     also time reading FILE and dequantizing every tensor
  --type NAME      with --model: also time quantizing it to this file type (e.g. q4_k_m)
  --threads N      worker threads for --type (default: one per core)`;

/** Process CPU seconds (user + system) from /proc/self/stat; NaN elsewhere. */
function cpuSeconds(): number {
  try {
    const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return NaN;
  }
}

/**
 * CPU seconds of one call: process CPU time over repeated calls (at least 0.5 s of it) divided by the calls,
 * so that other jobs on a shared machine do not count; the fastest wall time where /proc is missing.
 */
function timeIt(fn: () => void): number {
  fn(); // warm up the JIT
  let best = Infinity, reps = 0;
  const c0 = cpuSeconds(), w0 = performance.now();
  while (reps < 3 || (Number.isNaN(c0) ? performance.now() - w0 < 300 : cpuSeconds() - c0 < 0.5)) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
    reps++;
  }
  return Number.isNaN(c0) ? best : (cpuSeconds() - c0) / reps;
}

async function main() {
  const v = parseFlags(Deno.args, {
    elements: { type: "string" },
    types: { type: "string" },
    model: { type: "string" },
    type: { type: "string" },
    threads: { type: "string" },
  }, USAGE);
  const n = intFlag("elements", v.elements, 1 << 20, 256);
  if (n % 256 !== 0) throw new UsageError(`--elements must be a multiple of 256, got ${n}`);
  const types = (v.types ?? BLOCK_TYPES.join(",")).split(",").map((s) => {
    const t = ggmlTypeFromName(s.trim());
    if (t === undefined || !GGML_TYPES[t].quantize) {
      throw new UsageError(`unknown or unsupported type "${s}"`);
    }
    return t;
  });
  if (v.type && !v.model) throw new UsageError("--type needs --model");
  if (v.type && !fileTypeByName(v.type)) throw new UsageError(`unknown --type "${v.type}"`);
  const threads = v.threads === undefined ? undefined : intFlag("threads", v.threads, 1, 1);

  let s = 12345;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const u = (s + 0.5) / 2 ** 32;
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const r = 0.02 * Math.sqrt(-2 * Math.log(u)), th = (2 * Math.PI * s) / 2 ** 32;
    x[i] = r * Math.cos(th);
    x[i + 1] = r * Math.sin(th);
  }
  const copy = new Float32Array(n);
  const copyS = timeIt(() => copy.set(x));
  console.log(
    `${n} elements per type, one thread; float32 copy ${(n / copyS / 1e6).toFixed(0)} M elements/s`,
  );
  console.log("type     dequantize M/s  (of copy)  quantize M/s");
  for (const t of types) {
    const q = quantize(t, x);
    const dq = timeIt(() => dequantize(t, q, n));
    const qs = timeIt(() => quantize(t, x));
    console.log(
      `${ggmlTypeName(t).padEnd(8)} ${(n / dq / 1e6).toFixed(1).padStart(14)}  ${
        (copyS / dq).toFixed(3).padStart(9)
      }  ` +
        `${(n / qs / 1e6).toFixed(2).padStart(12)}`,
    );
  }

  if (v.model) {
    const t0 = performance.now(), c0 = cpuSeconds();
    const file = await readGGUFFile(v.model);
    const t1 = performance.now();
    let elements = 0;
    for (const t of file.tensors) {
      dequantize(t.type, tensorBytes(file, t), t.nElements);
      elements += t.nElements;
    }
    const t2 = performance.now(), c2 = cpuSeconds();
    const [read, deq, cpu] = [(t1 - t0) / 1000, (t2 - t1) / 1000, c2 - c0];
    console.log(
      `${v.model}: ${(file.bytes.byteLength / 1e6).toFixed(1)} MB read in ${
        read.toFixed(1)
      } s; every tensor ` +
        `dequantized in ${deq.toFixed(1)} s (${
          (elements / deq / 1e6).toFixed(0)
        } M elements per wall second; ` +
        `${cpu.toFixed(1)} s CPU in all)`,
    );
    if (v.type) {
      const out = await Deno.makeTempFile({ suffix: ".gguf" });
      try {
        const w0 = performance.now(), q0 = cpuSeconds();
        const r = await quantizeGGUF(file, out, { type: v.type, threads, allowRequantize: true });
        console.log(
          `quantize to ${r.fileType.name}: ${((performance.now() - w0) / 1000).toFixed(1)} s wall, ` +
            `${(cpuSeconds() - q0).toFixed(1)} s CPU (workers included), ${(r.bytesOut / 1e6).toFixed(1)} MB`,
        );
      } finally {
        await Deno.remove(out);
      }
    }
  }
}

if (import.meta.main) await runMain(main);
