/**
 * Quantize a GGUF model: `deno task quantize --in F32.gguf --out Q8_0.gguf --type q8_0|q4_0`.
 *
 * Every 2-D weight whose inner dim is a multiple of 32 and whose type can be decoded (F32, F16, BF16, Q8_0,
 * Q4_0) is re-encoded; norms, 1-D tensors and anything else are copied unchanged. `general.file_type` is set
 * to llama.cpp's LLAMA_FTYPE (7 = MOSTLY_Q8_0, 2 = MOSTLY_Q4_0). The output is written atomically.
 * Exit codes: 2 bad flags, 1 bad input or failure.
 */
import { parseArgs } from "node:util";
import { GGMLType } from "../model/types.ts";
import { dequantize, ggmlTypeName, isSupportedType, quantize } from "../model/ggml.ts";
import { type GGUFFile, type GGUFKV, GGUFValueType, readGGUFFile, tensorBytes } from "../model/gguf.ts";
import { type GGUFTensorDesc, writeGGUFFile } from "../model/gguf_writer.ts";

export const QUANT_TARGETS: Record<string, { type: GGMLType; fileType: number }> = {
  q8_0: { type: GGMLType.Q8_0, fileType: 7 },
  q4_0: { type: GGMLType.Q4_0, fileType: 2 },
};

export interface QuantizeResult {
  quantized: number;
  total: number;
  bytesIn: number;
  bytesOut: number;
}

/** Whether `quantizeGGUF` re-encodes this tensor. */
export function shouldQuantize(name: string, type: GGMLType, shape: number[]): boolean {
  return shape.length === 2 && shape[1] % 32 === 0 && isSupportedType(type) && !name.endsWith("_norm.weight");
}

/** Quantize a parsed GGUF file to `outPath` (atomic). */
export async function quantizeGGUF(file: GGUFFile, outPath: string, target: keyof typeof QUANT_TARGETS) {
  const t = QUANT_TARGETS[target];
  if (!t) throw new Error(`unknown quantization type "${target}"`);
  const metadata: Record<string, GGUFKV> = Object.create(null);
  Object.assign(metadata, file.metadata);
  metadata["general.file_type"] = { type: GGUFValueType.UINT32, value: t.fileType };
  const plan = file.tensors.map((info) => ({ info, q: shouldQuantize(info.name, info.type, info.shape) }));
  const tensors: GGUFTensorDesc[] = plan.map(({ info, q }) => ({
    name: info.name,
    type: q ? t.type : info.type,
    shape: info.shape,
  }));
  const bytesOut = await writeGGUFFile(outPath, { metadata, tensors, alignment: file.alignment }, (i) => {
    const { info, q } = plan[i];
    const raw = tensorBytes(file, info);
    if (!q) return raw;
    if (info.type === t.type) return raw;
    return quantize(t.type, dequantize(info.type, raw, info.nElements));
  });
  return {
    quantized: plan.filter((p) => p.q).length,
    total: plan.length,
    bytesIn: file.bytes.byteLength,
    bytesOut,
  } satisfies QuantizeResult;
}

function mb(n: number): string {
  return `${(n / 1e6).toFixed(2)} MB`;
}

const USAGE = "usage: deno task quantize --in IN.gguf --out OUT.gguf --type q8_0|q4_0";

async function main(args: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        in: { type: "string" },
        out: { type: "string" },
        type: { type: "string" },
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
  const inPath = values.in, outPath = values.out;
  const type = String(values.type ?? "").toLowerCase();
  if (typeof inPath !== "string" || typeof outPath !== "string" || !values.type) {
    console.error(`quantize: --in, --out and --type are required (${USAGE})`);
    return 2;
  }
  if (!Object.hasOwn(QUANT_TARGETS, type)) {
    console.error(`quantize: unknown --type "${values.type}" (expected q8_0 or q4_0)`);
    return 2;
  }
  try {
    const file = await readGGUFFile(inPath);
    const r = await quantizeGGUF(file, outPath, type);
    console.log(
      `quantize: ${r.quantized}/${r.total} tensors -> ${ggmlTypeName(QUANT_TARGETS[type].type)}, ` +
        `${mb(r.bytesIn)} -> ${mb(r.bytesOut)} (${outPath})`,
    );
    return 0;
  } catch (e) {
    console.error(`quantize: ${((e as Error).message ?? String(e)).split("\n")[0]}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
