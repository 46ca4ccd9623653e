/**
 * Fuzz targets: each builds a valid corpus once (`setup`), makes one input per case from it (`gen`, random
 * and structure-aware mutations) and feeds it to the code under test (`run`). A case passes when `run`
 * returns or throws an error `clean` accepts: the format's own error class, with a message. Anything else — a
 * TypeError or RangeError from inside a parser, a stack overflow, a hang (the runner's watchdog), memory
 * that grows past the cap — is a finding.
 */
import zlib from "node:zlib";
import { ModelFormatError } from "../../src/model/errors.ts";
import { parseGGUF, plainMetadata, tensorBytes } from "../../src/model/gguf.ts";
import { writeGGUF } from "../../src/model/gguf_writer.ts";
import { modelFromGGUF } from "../../src/model/gguf_model.ts";
import { tokenizerFromGGUFMetadata } from "../../src/model/tokenizer/from_gguf.ts";
import { hfTokenizerFromJSON } from "../../src/model/tokenizer/hf_bpe.ts";
import { encodeSafetensors, parseSafetensors } from "../../src/model/safetensors.ts";
import { SHARED_MODELS } from "../../src/model/loader.ts";
import { GGUFValueType } from "../../src/model/gguf.ts";
import { HostKVCache } from "../../src/kv/cache.ts";
import { createPolicy } from "../../src/kv/registry.ts";
import {
  crc32,
  decodeSnapshot,
  encodeSnapshot,
  type SessionSnapshot,
  SnapshotError,
} from "../../src/session/codec.ts";
import { decodeBundle, encodeBundle } from "../../src/session/bundle.ts";
import { concat, hardValue, interesting, jsonText, mutateBytes, mutateJson, Rng, writeLE } from "./gen.ts";

export interface Target<C = unknown, I = unknown> {
  name: string;
  what: string;
  setup(): Promise<C>;
  gen(r: Rng, ctx: C): I;
  run(input: I, ctx: C): unknown;
  /** Whether a thrown value is a clean rejection of bad input. */
  clean(e: unknown): boolean;
  teardown?(ctx: C): Promise<void>;
  /** Bytes of an input, to save a finding for replay. */
  bytes?(input: I): Uint8Array;
}

/** Exactly `Error` (not a TypeError, RangeError…) or a format error class, with a message. */
const plainError = (e: unknown) => e instanceof Error && e.constructor === Error && e.message.length > 0;
const modelError = (e: unknown) => (e instanceof ModelFormatError && e.message.length > 0) || plainError(e);
const te = new TextEncoder();

// ------------------------------------------------------------------------------------------------- GGUF

/** Offsets and widths of every framing field of a GGUF file (counts, lengths, types, dims, offsets). */
function ggufFields(b: Uint8Array): { off: number; width: 1 | 2 | 4 | 8 }[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: { off: number; width: 1 | 2 | 4 | 8 }[] = [{ off: 4, width: 4 }, { off: 8, width: 8 }, {
    off: 16,
    width: 8,
  }];
  let p = 24;
  const nT = Number(dv.getBigUint64(8, true)), nKV = Number(dv.getBigUint64(16, true));
  const str = () => {
    out.push({ off: p, width: 8 });
    p += 8 + Number(dv.getBigUint64(p, true));
  };
  const SIZES: Record<number, number> = {
    0: 1,
    1: 1,
    2: 2,
    3: 2,
    4: 4,
    5: 4,
    6: 4,
    7: 1,
    10: 8,
    11: 8,
    12: 8,
  };
  const value = (t: number) => {
    if (t === GGUFValueType.STRING) return str();
    if (t === GGUFValueType.ARRAY) {
      out.push({ off: p, width: 4 });
      const it = dv.getUint32(p, true);
      out.push({ off: p + 4, width: 8 });
      const n = Number(dv.getBigUint64(p + 4, true));
      p += 12;
      for (let i = 0; i < n; i++) value(it);
      return;
    }
    p += SIZES[t];
  };
  for (let i = 0; i < nKV; i++) {
    str();
    out.push({ off: p, width: 4 });
    const t = dv.getUint32(p, true);
    p += 4;
    value(t);
  }
  for (let i = 0; i < nT; i++) {
    str();
    out.push({ off: p, width: 4 });
    const nd = dv.getUint32(p, true);
    p += 4;
    for (let d = 0; d < nd; d++, p += 8) out.push({ off: p, width: 8 });
    out.push({ off: p, width: 4 }, { off: p + 4, width: 8 });
    p += 12;
  }
  return out;
}

interface GgufCtx {
  bytes: Uint8Array;
  fields: { off: number; width: 1 | 2 | 4 | 8 }[];
  file: ReturnType<typeof parseGGUF>;
}

const gguf: Target<GgufCtx, Uint8Array> = {
  name: "gguf",
  what: "GGUF reader → model config and weights → tokenizer from metadata → encode/decode",
  async setup() {
    const bytes = await Deno.readFile(SHARED_MODELS.stories260K);
    return { bytes, fields: ggufFields(bytes), file: parseGGUF(bytes) };
  },
  gen(r, { bytes, fields, file }) {
    switch (r.int(4)) {
      case 0: { // a framing field set to an interesting value
        const b = bytes.slice();
        for (let n = 1 + r.int(2); n > 0; n--) {
          const f = r.pick(fields);
          writeLE(b, f.off, f.width, interesting(r, f.width));
        }
        return b;
      }
      case 1: { // cut at or near a field boundary
        const f = r.pick(fields);
        return bytes.slice(0, Math.max(0, f.off + r.int(f.width + 2) - 1));
      }
      case 2: { // metadata values changed (type, length, content), written back as a well-framed file
        const metadata = { ...file.metadata };
        const keys = Object.keys(metadata);
        for (let n = 1 + r.int(3); n > 0; n--) {
          const k = r.pick(keys);
          const kv = metadata[k];
          if (!kv) continue;
          if (r.chance(0.2)) delete metadata[k];
          else if (kv.type === GGUFValueType.ARRAY && typeof kv.value === "object" && "items" in kv.value) {
            const items = kv.value.items.slice(
              0,
              r.chance(0.5) ? r.int(kv.value.items.length + 1) : undefined,
            );
            if (items.length && r.chance(0.5)) items[r.int(items.length)] = items[r.int(items.length)];
            metadata[k] = { type: kv.type, value: { itemType: kv.value.itemType, items } };
          } else if (typeof kv.value === "number") {
            metadata[k] = { type: kv.type, value: Number(interesting(r, 4)) | 0 };
          } else if (typeof kv.value === "string") {
            metadata[k] = {
              type: kv.type,
              value: r.pick(["", "gpt2", "llama", "qwen2", "\u0000", "x".repeat(999)]),
            };
          }
        }
        const tensors = file.tensors.map((t) => ({
          name: t.name,
          type: t.type,
          shape: t.shape,
          data: tensorBytes(file, t),
        }));
        try {
          return writeGGUF({ metadata, tensors });
        } catch {
          return mutateBytes(r, bytes);
        }
      }
      default:
        return mutateBytes(r, bytes);
    }
  },
  run(b) {
    const file = parseGGUF(b);
    modelFromGGUF(file);
    const tok = tokenizerFromGGUFMetadata(plainMetadata(file), () => {});
    const ids = tok.encode("Once upon a time, 12 ünï 💥\n", { addBos: true });
    tok.decode(ids);
  },
  clean: modelError,
  bytes: (b) => b,
};

// ------------------------------------------------------------------------------------------ safetensors

interface StCtx {
  bytes: Uint8Array;
  header: Record<string, unknown>;
  data: Uint8Array;
}

const safetensors: Target<StCtx, Uint8Array> = {
  name: "safetensors",
  what: "safetensors reader (header JSON, dtypes, shapes, offsets)",
  setup() {
    const f32 = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
    const bytes = encodeSafetensors([
      { name: "a.weight", dtype: "F32", shape: [2, 3], data: f32 },
      { name: "b.weight", dtype: "F16", shape: [4], data: new Uint8Array(8) },
      { name: "c.weight", dtype: "BF16", shape: [1, 2], data: new Uint8Array(4) },
    ], { format: "pt" });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
    return Promise.resolve({ bytes, header, data: bytes.subarray(8 + n) });
  },
  gen(r, { bytes, header, data }) {
    if (r.chance(0.3)) return mutateBytes(r, bytes);
    const text = te.encode(jsonText(r, mutateJson(r, header)));
    const len = new Uint8Array(8);
    writeLE(len, 0, 8, r.chance(0.9) ? BigInt(text.length) : interesting(r, 8));
    return concat(len, text, r.chance(0.8) ? data : mutateBytes(r, data));
  },
  run: (b) => parseSafetensors(b),
  clean: modelError,
  bytes: (b) => b,
};

// --------------------------------------------------------------------------------------- tokenizer.json

interface TjCtx {
  doc: unknown;
  paths: (string | number)[][];
}

const tokenizerJson: Target<TjCtx, unknown> = {
  name: "tokenizer_json",
  what: "tokenizer.json loader (BPE model, pre-tokenizers, normalizers, added tokens) → encode/decode",
  async setup() {
    const doc = JSON.parse(await Deno.readTextFile(`${SHARED_MODELS.tinystories656K}/tokenizer.json`));
    // Paths into everything but the long vocab/merges tables (a few of their entries are enough).
    const paths: (string | number)[][] = [];
    const walk = (x: unknown, p: (string | number)[]) => {
      paths.push(p);
      if (Array.isArray(x)) x.slice(0, 8).forEach((y, i) => walk(y, [...p, i]));
      else if (x && typeof x === "object") {
        Object.entries(x).slice(0, 40).forEach(([k, y]) => walk(y, [...p, k]));
      }
    };
    walk(doc, []);
    return { doc, paths };
  },
  gen: (r, { doc, paths }) => mutateJson(r, doc, paths),
  run(doc) {
    const tok = hfTokenizerFromJSON(doc);
    const ids = tok.encode("Once upon a time, there was a little girl. 123 ünïcödé 💥 <s>", { addBos: true });
    tok.decode(ids);
  },
  clean: modelError,
  bytes: (doc) => te.encode(JSON.stringify(doc) ?? "undefined"),
};

// ------------------------------------------------------------------------------------- session codec

const FP = "ab".repeat(32);

function sampleSnapshot(): SessionSnapshot {
  const shape = { nLayers: 3, nKVHeads: 2, headDim: 4 };
  const kv = new HostKVCache(shape);
  for (let t = 0; t < 24; t++) {
    for (let l = 0; l < shape.nLayers; l++) {
      kv.append(
        l,
        Float32Array.from({ length: 8 }, (_, i) => Math.sin(t + i + l)),
        new Float32Array(8).fill(t),
        t,
      );
    }
  }
  kv.nextPos = 24;
  kv.compact(
    Array.from(
      { length: shape.nLayers },
      (_, l) => Int32Array.from({ length: 12 + l }, (_, i) => i + (i >= 4 ? l : 0)),
    ),
  );
  const scores = Array.from({ length: shape.nLayers }, (_, l) => new Float32Array(12 + l).fill(0.5));
  return {
    fingerprint: FP,
    tokens: Array.from({ length: 26 }, (_, i) => (i * 37) % 512),
    kv,
    policy: { name: "h2o", params: { budget: 16 }, state: { scores, meta: {} } },
    sampler: { params: { seed: 1 }, state: [1, 2, 3, 4] },
    meta: { turns: 3 },
  };
}

/** A snapshot envelope around `payload` with every length and the checksum right (codec.ts's header). */
function envelope(payload: Uint8Array, flags: number, precision: number, rawBytes: number): Uint8Array {
  const fp = te.encode(FP);
  const head = new Uint8Array(18 + fp.length);
  const dv = new DataView(head.buffer);
  head.set([0x4c, 0x53, 0x4e, 0x50]);
  dv.setUint16(4, 1, true);
  head[6] = flags;
  head[7] = precision;
  dv.setUint32(8, rawBytes, true);
  dv.setUint32(12, payload.length, true);
  dv.setUint16(16, fp.length, true);
  head.set(fp, 18);
  const crc = new Uint8Array(4);
  new DataView(crc.buffer).setUint32(0, crc32(payload, crc32(head)), true);
  return concat(head, crc, payload);
}

interface CodecCtx {
  snap: SessionSnapshot;
  blobs: Uint8Array[];
  /** Uncompressed payloads (level 0) by precision code. */
  raw: { payload: Uint8Array; precision: number }[];
}

function resumeFrom(blob: Uint8Array): void {
  const snap = decodeSnapshot(blob, { fingerprint: FP, maxRawBytes: 64 << 20 });
  // What a resumed turn does next (turn.ts): load the cache, import the policy state. Any error here makes
  // the turn rebuild the cache, so only hangs and crashes matter; decodeSnapshot itself must be clean.
  try {
    const kv = new HostKVCache(snap.kv.shape);
    kv.loadFrom(snap.kv);
    createPolicy(
      { ...snap.policy.params, name: snap.policy.name },
      { nLayers: snap.kv.shape.nLayers, contextLength: 4096 },
    ).importState(snap.policy.state, kv);
  } catch (e) {
    if (!(e instanceof Error)) throw e;
  }
}

const codec: Target<CodecCtx, Uint8Array> = {
  name: "codec",
  what: "session snapshot codec (envelope, checksum, inflate, payload) → cache load and policy import",
  setup() {
    const snap = sampleSnapshot();
    const blobs = (["f32", "f16", "int8"] as const).flatMap((p) => [
      encodeSnapshot(snap, { kvPrecision: p }),
      encodeSnapshot(snap, { kvPrecision: p, shuffle: false }),
    ]);
    const raw = (["f32", "f16", "int8"] as const).map((p, precision) => {
      const b = encodeSnapshot(snap, { kvPrecision: p, level: 0, shuffle: false });
      return { payload: b.subarray(b.length - new DataView(b.buffer).getUint32(12, true)), precision };
    });
    return Promise.resolve({ snap, blobs, raw });
  },
  gen(r, { snap, blobs, raw }) {
    switch (r.int(4)) {
      case 0:
        return mutateBytes(r, r.pick(blobs));
      case 1: { // payload mutated, framing and checksum right: the payload parser sees it
        const { payload, precision } = r.pick(raw);
        const p = mutateBytes(r, payload);
        if (r.chance(0.5)) {
          const z = new Uint8Array(zlib.deflateRawSync(p));
          return envelope(z, 1, precision, r.chance(0.9) ? p.length : Number(interesting(r, 4)));
        }
        return envelope(p, r.chance(0.9) ? 0 : r.int(256), r.chance(0.9) ? precision : r.int(256), p.length);
      }
      case 2: { // a snapshot whose JSON parts (policy, sampler, meta) or tokens are wrong, encoded properly
        const bad = mutateJson(r, {
          policy: { name: snap.policy.name, params: snap.policy.params, meta: {} },
          sampler: snap.sampler,
          meta: snap.meta,
          tokens: snap.tokens,
          // deno-lint-ignore no-explicit-any
        }) as Record<string, any>;
        try {
          return encodeSnapshot({
            ...snap,
            tokens: bad?.tokens ?? snap.tokens,
            policy: { ...snap.policy, name: bad?.policy?.name ?? "h2o", params: bad?.policy?.params ?? {} },
            sampler: bad?.sampler,
            meta: bad?.meta,
          }, { kvPrecision: r.pick(["f32", "f16", "int8"] as const) });
        } catch {
          return mutateBytes(r, r.pick(blobs));
        }
      }
      default: { // a lying length or a deflate bomb claim
        const b = r.pick(blobs).slice();
        writeLE(b, r.pick([8, 12, 16]), r.chance(0.5) ? 4 : 2, interesting(r, 4));
        return b;
      }
    }
  },
  run: resumeFrom,
  clean: (e) => e instanceof SnapshotError,
  bytes: (b) => b,
};

// ------------------------------------------------------------------------------------- session bundle

/** A bundle whose history section is damaged (decodeBundle reports it). */
class BundleRejected extends Error {}

interface BundleCtx {
  bundle: Uint8Array;
  history: { tokens: number[]; messages: unknown[] };
  snapshot: Uint8Array;
}

const bundle: Target<BundleCtx, Uint8Array> = {
  name: "bundle",
  what: "session bundle (history section: deflate + JSON + CRC; snapshot section) → resume",
  setup() {
    const snapshot = encodeSnapshot(sampleSnapshot(), { kvPrecision: "f16" });
    const history = {
      tokens: sampleSnapshot().tokens,
      messages: [{ role: "user", content: "Once upon a time" }, { role: "assistant", content: "there was" }],
    };
    return Promise.resolve({ bundle: encodeBundle(history, snapshot), history, snapshot });
  },
  gen(r, { bundle, history, snapshot }) {
    switch (r.int(3)) {
      case 0:
        return mutateBytes(r, bundle);
      case 1: { // the history JSON changed, framed and checksummed right
        const json = te.encode(jsonText(r, mutateJson(r, history)));
        const h = new Uint8Array(zlib.deflateRawSync(json));
        const out = concat(
          new Uint8Array([0x4c, 0x53, 0x42, 0x31, 0, 0, 0, 0]),
          h,
          new Uint8Array(4),
          snapshot,
        );
        const dv = new DataView(out.buffer);
        dv.setUint32(4, r.chance(0.9) ? h.length : Number(interesting(r, 4)), true);
        dv.setUint32(8 + h.length, crc32(h), true);
        return out;
      }
      default: {
        const b = bundle.slice();
        writeLE(b, 4, 4, interesting(r, 4));
        return b;
      }
    }
  },
  run(b) {
    const d = decodeBundle(b); // never throws: a damaged history is reported, not thrown
    if (d.history === null) {
      if (typeof d.historyError !== "string") throw new Error("no history and no reason");
      if (d.snapshot.length === 0) throw new BundleRejected(d.historyError);
    }
    resumeFrom(d.snapshot);
    if (d.history === null) throw new BundleRejected(d.historyError!);
  },
  clean: (e) => e instanceof BundleRejected || e instanceof SnapshotError,
  bytes: (b) => b,
};

// --------------------------------------------------------------------------------------- HTTP schemas

interface HttpCtx {
  url: string;
  session: string;
  stop(): Promise<void>;
}

interface HttpCase {
  method: string;
  path: string;
  body?: string;
  headers: Record<string, string>;
}

const HTTP_OK = new Set([200, 201, 400, 401, 404, 405, 409, 413, 415, 429]);

/** A 4xx with a proper OpenAI error body: the request was rejected cleanly. */
class HttpRejected extends Error {}

const http: Target<HttpCtx, HttpCase> = {
  name: "http",
  what: "HTTP request schemas (chat, completions, sessions) with random and adversarial JSON",
  async setup() {
    const { start } = await import("../support/server_harness.ts");
    const srv = await start({ defaultMaxTokens: 4, maxBatch: 4 });
    const res = await fetch(srv.url + "/v1/sessions", {
      method: "POST",
      body: "{}",
      headers: { "content-type": "application/json" },
    });
    const session = (await res.json()).id;
    return { url: srv.url, session, stop: () => srv.shutdown() };
  },
  gen(r, { session }) {
    const m = "stories260K";
    const templates: [string, string, unknown][] = [
      ["POST", "/v1/chat/completions", {
        model: m,
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 2,
        temperature: 0,
      }],
      ["POST", "/v1/chat/completions", {
        model: m,
        session_id: session,
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 2,
        stream: true,
        stream_options: { include_usage: true },
      }],
      ["POST", "/v1/completions", {
        model: m,
        prompt: "Once",
        max_tokens: 2,
        top_k: 5,
        top_p: 0.9,
        stop: ["x"],
        seed: 1,
      }],
      ["POST", "/v1/completions", {
        model: m,
        prompt: "Once",
        session_id: session,
        kv_policy: { name: "lethe", mode: "fixed", budget: 64 },
        max_tokens: 2,
      }],
      ["POST", "/v1/sessions", { kv_policy: { name: "h2o", budget: 32 } }],
    ];
    if (r.chance(0.15)) {
      const id = r.pick([
        session,
        "../" + session,
        `${session}%2F..`,
        "sess_%00",
        "x".repeat(300),
        encodeURIComponent(JSON.stringify(hardValue(r)) ?? "").slice(0, 2000), // longer: no client can send it
      ]);
      return { method: r.pick(["GET", "DELETE", "PUT"]), path: `/v1/sessions/${id}`, headers: {} };
    }
    const [method, path, tpl] = r.pick(templates);
    const headers: Record<string, string> = {
      "content-type": r.chance(0.9)
        ? "application/json"
        : r.pick(["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin1"]),
    };
    return { method, path, body: jsonText(r, r.chance(0.95) ? mutateJson(r, tpl) : hardValue(r)), headers };
  },
  async run(c, { url }) {
    const res = await fetch(url + c.path, { method: c.method, body: c.body, headers: c.headers });
    const text = await res.text();
    if (!HTTP_OK.has(res.status)) throw new Error(`status ${res.status}: ${text.slice(0, 300)}`);
    if (res.status >= 400) {
      const e = JSON.parse(text).error;
      if (
        typeof e?.message !== "string" || typeof e?.type !== "string" || !("param" in e) || !("code" in e)
      ) {
        throw new Error(`status ${res.status} without an OpenAI error body: ${text.slice(0, 300)}`);
      }
      throw new HttpRejected(`${res.status} ${e.code}`);
    } else if ((res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      if (!text.trimEnd().endsWith("data: [DONE]") || /"error"/.test(text)) {
        throw new Error(`bad stream: ${text.slice(-300)}`);
      }
    }
  },
  clean: (e) => e instanceof HttpRejected,
  teardown: (ctx) => ctx.stop(),
  bytes: (c) => te.encode(JSON.stringify(c)),
};

// deno-lint-ignore no-explicit-any
export const TARGETS: Record<string, Target<any, any>> = {
  gguf,
  safetensors,
  tokenizer_json: tokenizerJson,
  codec,
  bundle,
  http,
};
