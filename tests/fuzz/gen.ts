/**
 * The fuzzer's seeded generator and mutators. Every case draws from its own generator, seeded from (seed,
 * target, case number), so one failing case reproduces alone: `deno task fuzz --target T --seed S --case N`.
 *
 * Byte mutators (bit flips, interesting integers at any width, truncation, splices, inserts) work on any blob;
 * JSON mutators replace, drop or wrap a value at a random path with an adversarial one (deep nesting, huge
 * and non-finite numbers, lone surrogates and other hard unicode, long strings, wrong types). The targets
 * (targets.ts) add structure-aware mutations that keep a format's framing valid (lengths, checksums) so the
 * mutation reaches the parser's inner checks.
 */

export class Rng {
  #a: number;
  constructor(seed: number) {
    this.#a = seed >>> 0;
  }
  /** mulberry32: uniform in [0, 1). */
  next(): number {
    this.#a = (this.#a + 0x6d2b79f5) | 0;
    let t = Math.imul(this.#a ^ (this.#a >>> 15), 1 | this.#a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  /** Small numbers far more often than big ones (lengths, depths, counts). */
  skewed(max: number): number {
    return Math.floor(max ** this.next()) - 1 + (this.chance(0.5) ? 1 : 0);
  }
}

/** FNV-1a over the parts: a case's seed. */
export function caseSeed(seed: number, target: string, i: number): number {
  let h = 0x811c9dc5;
  for (const c of `${seed}/${target}/${i}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193);
  return h >>> 0;
}

// ------------------------------------------------------------------------------------------------ bytes

/** Values that break length and count checks, at each width. */
const INTERESTING = [
  0,
  1,
  2,
  7,
  8,
  15,
  16,
  31,
  32,
  63,
  64,
  127,
  128,
  255,
  256,
  0x7fff,
  0x8000,
  0xffff,
  0x10000,
  0x7fffffff,
  0x80000000,
  0xfffffffe,
  0xffffffff,
];
const INTERESTING_64 = [
  0n,
  1n,
  0x7fffffffn,
  0xffffffffn,
  0x100000000n,
  2n ** 53n,
  2n ** 53n + 1n,
  2n ** 63n - 1n,
  2n ** 63n,
  2n ** 64n - 1n,
];

export function interesting(r: Rng, bytes: 1 | 2 | 4 | 8): bigint {
  if (bytes === 8 && r.chance(0.5)) return r.pick(INTERESTING_64);
  const v = BigInt(r.pick(INTERESTING)) + BigInt(r.int(3) - 1);
  const mask = (1n << BigInt(8 * bytes)) - 1n;
  return v & mask;
}

/** Write `v` little-endian at `off` (within bounds). */
export function writeLE(b: Uint8Array, off: number, bytes: number, v: bigint): void {
  for (let i = 0; i < bytes && off + i < b.length; i++) b[off + i] = Number((v >> BigInt(8 * i)) & 0xffn);
}

/** One to four random byte-level mutations of a copy of `src`. */
export function mutateBytes(r: Rng, src: Uint8Array): Uint8Array {
  let b: Uint8Array = src.slice();
  for (let n = 1 + r.int(4); n > 0; n--) {
    const at = b.length ? r.int(b.length) : 0;
    switch (r.int(8)) {
      case 0: // bit flip
        if (b.length) b[at] ^= 1 << r.int(8);
        break;
      case 1: // random byte
        if (b.length) b[at] = r.int(256);
        break;
      case 2: { // an interesting integer at any width
        const w = r.pick([1, 2, 4, 8] as const);
        writeLE(b, at, w, interesting(r, w));
        break;
      }
      case 3: // truncate
        b = b.slice(0, r.chance(0.5) ? r.int(Math.min(b.length + 1, 64)) : r.int(b.length + 1));
        break;
      case 4: { // insert random bytes
        const ins = new Uint8Array(r.skewed(64)).map(() => r.int(256));
        b = concat(b.subarray(0, at), ins, b.subarray(at));
        break;
      }
      case 5: { // delete a run
        const len = r.skewed(64);
        b = concat(b.subarray(0, at), b.subarray(at + len));
        break;
      }
      case 6: { // duplicate a run elsewhere
        const len = r.skewed(256);
        const to = r.int(b.length + 1);
        b = concat(b.subarray(0, to), b.slice(at, at + len), b.subarray(to));
        break;
      }
      default: // append garbage
        b = concat(b, new Uint8Array(r.skewed(128)).map(() => r.int(256)));
    }
  }
  return b;
}

export function encodeBase64(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

// ------------------------------------------------------------------------------------------------- JSON

const HARD_STRINGS = [
  "",
  "\u0000",
  "\ud800",
  "\udfff\ud800",
  "a\u0301\u0301\u0301",
  "\u202egnp.exe",
  "\u200b\u200d\ufeff",
  "💥🧨".repeat(3),
  "\\u0000",
  "../../etc/passwd",
  "<script>alert(1)</script>",
  "%00%2e%2e%2f",
  "sess_" + "A".repeat(24),
  "__proto__",
  "constructor",
  "toString",
  "NaN",
  "1e999",
  "\r\nx-injected: 1",
];
const HARD_NUMBERS = [
  0,
  -0,
  1,
  -1,
  0.5,
  1e-320,
  1e308,
  -1e308,
  2 ** 31,
  2 ** 32,
  2 ** 53,
  2 ** 53 + 2,
  -(2 ** 63),
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  4294967296,
  1.0000000000000002,
];

/** A random adversarial JSON value (as a value; `jsonText` adds what only text can say). */
export function hardValue(r: Rng, depth = 0): unknown {
  switch (r.int(depth > 3 ? 6 : 9)) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick(HARD_NUMBERS);
    case 3:
      return r.int(2 ** 31) * (r.chance(0.5) ? 1 : -1);
    case 4:
      return r.pick(HARD_STRINGS);
    case 5:
      return r.chance(0.1) ? "x".repeat(r.skewed(200_000)) : randomString(r, r.skewed(40));
    case 6:
      return Array.from({ length: r.skewed(8) }, () => hardValue(r, depth + 1));
    case 7:
      return Object.fromEntries(
        Array.from({ length: r.skewed(6) }, () => [r.pick(HARD_STRINGS), hardValue(r, depth + 1)]),
      );
    default:
      return nested(r.skewed(5000), r.chance(0.5) ? "[" : "{");
  }
}

function randomString(r: Rng, n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) {
    s += r.chance(0.7) ? String.fromCharCode(32 + r.int(95)) : String.fromCharCode(r.int(0x10000));
  }
  return s;
}

/** A value nested `depth` levels deep: [[[…]]] or {"a":{"a":…}}. */
export function nested(depth: number, kind: "[" | "{"): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = kind === "[" ? [v] : { a: v };
  return v;
}

type Json = unknown;

/** Every path (keys and indices) into a JSON value, up to `limit` of them. */
function paths(v: Json, limit = 2000): (string | number)[][] {
  const out: (string | number)[][] = [];
  const walk = (x: Json, p: (string | number)[]) => {
    if (out.length >= limit) return;
    out.push(p);
    if (Array.isArray(x)) x.slice(0, 64).forEach((y, i) => walk(y, [...p, i]));
    else if (x && typeof x === "object") {
      for (const [k, y] of Object.entries(x).slice(0, 64)) walk(y, [...p, k]);
    }
  };
  walk(v, []);
  return out;
}

/** Set an own property, as JSON.parse makes it (a "__proto__" key included, which plain assignment refuses). */
function set(o: Record<string | number, unknown>, k: string | number, v: unknown): void {
  Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
}

/** A structure-aware mutation of a copy of `doc`: at a random path, replace, drop, wrap or retype the value. */
export function mutateJson(r: Rng, doc: Json, paths_?: (string | number)[][]): Json {
  const root = structuredClone(doc);
  const all = paths_ ?? paths(root);
  for (let n = 1 + r.int(3); n > 0; n--) {
    const p = r.pick(all);
    if (p.length === 0) return hardValue(r);
    // deno-lint-ignore no-explicit-any
    const parent = p.slice(0, -1).reduce<any>((x, k) => (x == null ? x : x[k]), root);
    if (parent == null || typeof parent !== "object") continue;
    const k = p[p.length - 1];
    const cur = parent[k];
    switch (r.int(6)) {
      case 0:
        if (Array.isArray(parent)) parent.splice(Number(k), 1);
        else delete parent[k];
        break;
      case 1:
        set(parent, k, [cur]);
        break;
      case 2: // the same kind of value, but adversarial
        set(
          parent,
          k,
          typeof cur === "number"
            ? r.pick(HARD_NUMBERS)
            : typeof cur === "string"
            ? r.pick(HARD_STRINGS)
            : hardValue(r),
        );
        break;
      case 3: // a sibling duplicated or an unknown key added
        if (Array.isArray(parent)) parent.push(cur); // shared, not cloned: it may be nested too deep to clone
        else set(parent, r.pick(HARD_STRINGS) || "extra", hardValue(r));
        break;
      default:
        set(parent, k, hardValue(r));
    }
  }
  return root;
}

/** JSON text for `v`, sometimes with what only text can carry: 1e999, duplicate keys, trailing garbage. */
export function jsonText(r: Rng, v: Json): string {
  const s = JSON.stringify(v) ?? "null";
  switch (r.int(12)) {
    case 0:
      return s.slice(0, r.int(s.length + 1)); // truncated
    case 1:
      return s.replace(/\d+(\.\d+)?/, "1e999");
    case 2:
      return s.replace(/^\{/, '{"model":1,"model":"x",');
    case 3:
      return s + r.pick([" ", "x", "}", "\u0000", "\n{}"]);
    case 4:
      return "[".repeat(r.skewed(200_000)) + "]".repeat(r.int(3));
    default:
      return s;
  }
}
