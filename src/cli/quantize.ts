/**
 * Quantize a GGUF model as llama-quantize does: `deno task quantize --in F32.gguf --out OUT.gguf --type TYPE
 * [--pure] [--allow-requantize] [--threads N]`.
 *
 * TYPE is a llama.cpp file type (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k,
 * iq4_nl, iq4_xs, f16, bf16, f32; q3_k/q4_k/q5_k mean the _m mixes). Each tensor's type follows
 * llama-quantize's rules (src/model/quant/mix.ts), its bytes ggml's reference quantizers without an
 * importance matrix, so a file quantized from the same F32 model is llama-quantize's, tensor for tensor.
 * Tensors are written in llama-quantize's order, with `general.quantization_version` 2 and
 * `general.file_type` set. Quantized inputs need --allow-requantize (as in llama-quantize). The output is
 * written atomically. Exit codes: 2 bad flags, 1 bad input or failure.
 */
import { parseArgs } from "node:util";
import { dequantize, GGML_TYPES, ggmlTypeName } from "../model/ggml.ts";
import { QuantizePool } from "../model/quant/pool.ts";
import {
  type GGUFFile,
  type GGUFKV,
  GGUFValueType,
  plainValue,
  readGGUFFile,
  tensorBytes,
} from "../model/gguf.ts";
import { writeGGUFFile } from "../model/gguf_writer.ts";
import {
  type FileType,
  fileTypeByName,
  fileTypeNames,
  planQuantization,
  type QuantModelInfo,
  type QuantTensorPlan,
} from "../model/quant/mix.ts";

export interface QuantizeOptions {
  /** A file type name (see FILE_TYPES in src/model/quant/mix.ts). */
  type: string;
  /** Every quantized tensor in the base type (llama-quantize --pure); row fallbacks still apply. */
  pure?: boolean;
  /** Allow inputs whose tensors are already quantized (they are dequantized first). */
  allowRequantize?: boolean;
  /** Worker threads (default: one per core; 1 = quantize on the calling thread). */
  threads?: number;
  /** A pool to reuse (its threads win over `threads`); it is left open. */
  pool?: QuantizePool;
}

export interface QuantizeResult {
  fileType: FileType;
  /** Every tensor in written order with its source and target type. */
  plan: QuantTensorPlan[];
  bytesIn: number;
  bytesOut: number;
}

/** The model facts llama-quantize's type rules need, from the GGUF metadata. */
export function quantModelInfo(file: GGUFFile): QuantModelInfo {
  const meta = (key: string): unknown => {
    const kv = file.metadata[key];
    const v = kv ? plainValue(kv.value) : undefined;
    return Array.isArray(v) ? v[0] : v; // per-layer arrays (head_count_kv): llama.cpp's n_gqa() uses layer 0
  };
  const arch = meta("general.architecture");
  if (typeof arch !== "string") throw new Error(`quantize: missing "general.architecture"`);
  const int = (key: string, def?: number): number => {
    const v = meta(`${arch}.${key}`) ?? def;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new Error(`quantize: metadata "${arch}.${key}" must be a positive integer, got ${String(v)}`);
    }
    return v;
  };
  const nHead = int("attention.head_count");
  return { arch, nLayers: int("block_count"), nHead, nHeadKV: int("attention.head_count_kv", nHead) };
}

/** Quantize a parsed GGUF file to `outPath` (atomic). */
export async function quantizeGGUF(
  file: GGUFFile,
  outPath: string,
  opts: QuantizeOptions,
): Promise<QuantizeResult> {
  const fileType = fileTypeByName(opts.type);
  if (!fileType) throw new RangeError(`unknown quantization type "${opts.type}"`);
  const plan = planQuantization(file.tensors, quantModelInfo(file), fileType, { pure: opts.pure });
  const byName = new Map(file.tensors.map((t) => [t.name, t]));
  if (!opts.allowRequantize) {
    const q = plan.find((p) => p.requantize && GGML_TYPES[p.type].blockSize > 1);
    if (q) {
      throw new Error(
        `tensor "${q.name}" is already ${ggmlTypeName(q.type)}: requantizing loses precision ` +
          `(pass --allow-requantize to do it anyway)`,
      );
    }
  }
  // llama-quantize copies every key, drops the split keys and sets these two last
  const metadata: Record<string, GGUFKV> = Object.create(null);
  for (const [k, v] of Object.entries(file.metadata)) {
    if (!k.startsWith("split.") && k !== "general.quantization_version" && k !== "general.file_type") {
      metadata[k] = v;
    }
  }
  metadata["general.quantization_version"] = { type: GGUFValueType.UINT32, value: 2 };
  metadata["general.file_type"] = { type: GGUFValueType.UINT32, value: fileType.ftype };
  const tensors = plan.map((p) => ({ name: p.name, type: p.target, shape: p.shape.slice() }));
  const pool = opts.pool ?? new QuantizePool(opts.threads);
  try {
    const bytesOut = await writeGGUFFile(outPath, { metadata, tensors, alignment: file.alignment }, (i) => {
      const p = plan[i];
      const info = byName.get(p.name)!;
      const raw = tensorBytes(file, info);
      if (!p.requantize) return raw;
      return pool.quantize(p.target, dequantize(info.type, raw, info.nElements));
    });
    return { fileType, plan, bytesIn: file.bytes.byteLength, bytesOut };
  } finally {
    if (!opts.pool) pool.close();
  }
}

function mb(n: number): string {
  return `${(n / 1e6).toFixed(2)} MB`;
}

/** "Q4_K 12, Q6_K 3, F32 5": tensors per written type, most first. */
export function typeCounts(plan: QuantTensorPlan[]): string {
  const counts = new Map<string, number>();
  for (const p of plan) counts.set(ggmlTypeName(p.target), (counts.get(ggmlTypeName(p.target)) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).map(([t, n]) => `${t} ${n}`).join(", ");
}

const USAGE = `usage: deno task quantize --in IN.gguf --out OUT.gguf --type ${
  fileTypeNames().join("|")
} [--pure] [--allow-requantize] [--threads N]`;

async function main(args: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        in: { type: "string" },
        out: { type: "string" },
        type: { type: "string" },
        pure: { type: "boolean" },
        "allow-requantize": { type: "boolean" },
        threads: { type: "string" },
        help: { type: "boolean" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`quantize: ${(e as Error).message.split("\n")[0]} (${USAGE})`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const inPath = values.in, outPath = values.out, type = values.type;
  if (typeof inPath !== "string" || typeof outPath !== "string" || typeof type !== "string") {
    console.error(`quantize: --in, --out and --type are required (${USAGE})`);
    return 2;
  }
  if (!fileTypeByName(type)) {
    console.error(`quantize: unknown --type "${type}" (expected ${fileTypeNames().join(", ")})`);
    return 2;
  }
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  if (threads !== undefined && !(/^\d+$/.test(String(values.threads)) && threads >= 1 && threads <= 256)) {
    console.error(`quantize: --threads must be an integer 1..256, got "${values.threads}"`);
    return 2;
  }
  try {
    const t0 = performance.now();
    const file = await readGGUFFile(inPath);
    const r = await quantizeGGUF(file, outPath, {
      type,
      pure: values.pure === true,
      allowRequantize: values["allow-requantize"] === true,
      threads,
    });
    const n = r.plan.filter((p) => p.requantize).length;
    console.log(
      `quantize: ${r.fileType.name}: ${n}/${r.plan.length} tensors quantized (${typeCounts(r.plan)}), ` +
        `${mb(r.bytesIn)} -> ${mb(r.bytesOut)} in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s (${outPath})`,
    );
    return 0;
  } catch (e) {
    console.error(`quantize: ${((e as Error).message ?? String(e)).split("\n")[0]}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
