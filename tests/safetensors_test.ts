import assert from "node:assert/strict";
import { join } from "node:path";
import {
  encodeSafetensors,
  parseSafetensors,
  readSafetensorsCheckpoint,
  readSafetensorsFile,
} from "../src/model/safetensors.ts";
import { ModelFormatError } from "../src/model/errors.ts";
import { GGMLType } from "../src/model/types.ts";

const f32 = (...v: number[]) => new Uint8Array(Float32Array.from(v).buffer);

/** A file from a raw header object and `dataLen` bytes of data (0, 1, 2, ...). */
function rawFile(header: unknown, dataLen: number, headerLenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataLen);
  new DataView(out.buffer).setBigUint64(0, headerLenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  for (let i = 0; i < dataLen; i++) out[8 + json.length + i] = i & 0xff;
  return out;
}

function assertFormatError(fn: () => unknown, re: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ModelFormatError, `expected ModelFormatError, got ${e}`);
    assert.match((e as Error).message, re);
    return true;
  });
}

Deno.test("safetensors: round trip of F32/F16/BF16 tensors and metadata", () => {
  const bytes = encodeSafetensors([
    { name: "a", dtype: "F32", shape: [2, 3], data: f32(1, 2, 3, 4, 5, 6) },
    { name: "b", dtype: "F16", shape: [2], data: Uint8Array.of(0x00, 0x3c, 0x00, 0xc0) }, // 1.0, -2.0
    { name: "c", dtype: "BF16", shape: [], data: Uint8Array.of(0x80, 0x3f) }, // 1.0
  ], { format: "pt" });
  const f = parseSafetensors(bytes, "mem.safetensors");
  assert.deepEqual(f.metadata, { format: "pt" });
  assert.deepEqual([...f.tensors.keys()], ["a", "b", "c"]);
  const a = f.tensors.get("a")!;
  assert.equal(a.type, GGMLType.F32);
  assert.deepEqual(a.shape, [2, 3]);
  assert.deepEqual([...new Float32Array(a.data.slice().buffer)], [1, 2, 3, 4, 5, 6]);
  assert.equal(a.data.buffer, bytes.buffer, "aligned tensors are views into the file bytes");
  assert.equal(f.tensors.get("b")!.type, GGMLType.F16);
  assert.deepEqual([...f.tensors.get("b")!.data], [0x00, 0x3c, 0x00, 0xc0]);
  assert.equal(f.tensors.get("c")!.type, GGMLType.BF16);
  assert.deepEqual(f.tensors.get("c")!.shape, []);
});

Deno.test("safetensors: malformed files are ModelFormatErrors naming file and problem", () => {
  const ok = { t: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  assertFormatError(() => parseSafetensors(new Uint8Array(5), "x.st"), /^x\.st: file is 5 bytes, too short/);
  assertFormatError(
    () => parseSafetensors(rawFile(ok, 8, 1000n), "x.st"),
    /^x\.st: header length 1000 exceeds the \d+ bytes after the length prefix/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile(ok, 8, 0xffffffffffffffffn), "x.st"),
    /header length 18446744073709551615 exceeds/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile("{not json", 8), "x.st"),
    /^x\.st: header is not valid JSON/,
  );
  assertFormatError(() => parseSafetensors(rawFile("[1,2]", 8), "x.st"), /header is not a JSON object/);
  assertFormatError(
    () => parseSafetensors(rawFile({ t: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, 4), "x.st"),
    /tensor t: data_offsets \[0, 8\] out of range \(data section is 4 bytes\)/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile({ t: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, 8), "x.st"),
    /tensor t: data_offsets \[8, 0\] are not ordered/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile({ t: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, 8), "x.st"),
    /tensor t: size mismatch: shape \[3\] F32 needs 12 bytes, data_offsets span 8/,
  );
  assertFormatError(
    () =>
      parseSafetensors(
        rawFile({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
        }, 12),
        "x.st",
      ),
    /tensors a \[0, 8\) and b \[4, 12\) overlap/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile({ t: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, 8), "x.st"),
    /tensor t: unsupported dtype I64 \(supported: F32, F16, BF16\)/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile({ t: { dtype: "Q9", shape: [1], data_offsets: [0, 8] } }, 8), "x.st"),
    /tensor t: unknown dtype Q9/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile({ t: { dtype: "F32", shape: [-1], data_offsets: [0, 8] } }, 8), "x.st"),
    /tensor t: shape must be an array of non-negative integers/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile({ t: { dtype: "F32", shape: [2], data_offsets: [0] } }, 8), "x.st"),
    /tensor t: data_offsets must be two non-negative integers/,
  );
  assertFormatError(
    () => parseSafetensors(rawFile({ __metadata__: { a: 1 } }, 0), "x.st"),
    /__metadata__\.a is not a string/,
  );
});

Deno.test("safetensors: misaligned tensors are copied so typed views work", () => {
  // Pad the header so the data section starts at an odd offset: the F32 view would be misaligned.
  let h = JSON.stringify({ t: { dtype: "F32", shape: [1], data_offsets: [0, 4] } });
  while ((8 + h.length) % 4 !== 1) h += " ";
  const bytes = rawFile(h, 4);
  const t = parseSafetensors(bytes, "m.st").tensors.get("t")!;
  assert.equal(t.data.byteOffset % 4, 0);
  assert.deepEqual([...t.data], [0, 1, 2, 3]);
});

Deno.test("safetensors: files on disk, lying length checked before reading, sharded index", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lethe_st_" });
  try {
    const lying = join(dir, "lying.safetensors");
    await Deno.writeFile(lying, rawFile({}, 0, 1n << 60n));
    await assert.rejects(readSafetensorsFile(lying), (e: unknown) => {
      assert.ok(e instanceof ModelFormatError);
      assert.match((e as Error).message, /lying\.safetensors: header length 1152921504606846976 exceeds/);
      return true;
    });
    await assert.rejects(
      readSafetensorsFile(join(dir, "nope.safetensors")),
      /nope\.safetensors: file not found/,
    );
    await assert.rejects(
      readSafetensorsCheckpoint(dir),
      /no model\.safetensors and no model\.safetensors\.index\.json/,
    );

    await Deno.writeFile(
      join(dir, "s1.safetensors"),
      encodeSafetensors([{ name: "x", dtype: "F32", shape: [1], data: f32(7) }]),
    );
    await Deno.writeFile(
      join(dir, "s2.safetensors"),
      encodeSafetensors([{ name: "y", dtype: "F32", shape: [2], data: f32(8, 9) }]),
    );
    const index = join(dir, "model.safetensors.index.json");
    await Deno.writeTextFile(
      index,
      JSON.stringify({ weight_map: { x: "s1.safetensors", y: "s2.safetensors" } }),
    );
    const ck = await readSafetensorsCheckpoint(dir);
    assert.deepEqual([...ck.tensors.keys()].sort(), ["x", "y"]);
    assert.deepEqual([...new Float32Array(ck.tensors.get("y")!.data.slice().buffer)], [8, 9]);

    await Deno.writeTextFile(
      index,
      JSON.stringify({ weight_map: { x: "s1.safetensors", z: "s2.safetensors" } }),
    );
    await assert.rejects(readSafetensorsCheckpoint(dir), /s2\.safetensors: tensor z listed in .* is missing/);
    await Deno.writeTextFile(index, JSON.stringify({ weight_map: { x: "s3.safetensors" } }));
    await assert.rejects(readSafetensorsCheckpoint(dir), /s3\.safetensors: file not found/);
    await Deno.writeTextFile(index, JSON.stringify({ weight_map: { x: "../s1.safetensors" } }));
    await assert.rejects(readSafetensorsCheckpoint(dir), /weight_map\[x\] is not a shard file name/);
    await Deno.writeTextFile(index, "{");
    await assert.rejects(readSafetensorsCheckpoint(dir), /index\.json: not valid JSON/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
