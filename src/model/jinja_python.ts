// deno-lint-ignore-file no-explicit-any -- the library's runtime values and AST nodes are not exported as types
/**
 * Python jinja2 semantics on top of `@huggingface/jinja`, as Hugging Face transformers renders chat templates.
 *
 * The library lexes, parses and interprets the template; `PythonInterpreter` overrides the few interpreter steps
 * where its JavaScript behaviour differs from jinja2 under Python:
 * - how values print (`str()`: `True`, `None`, `{'a': 1}`, `1e-05`) and `~`, `+`, `*`, `%`, `==`, `in`, `<`;
 * - `tojson` = `json.dumps(x, ensure_ascii=False, indent, separators, sort_keys)` (transformers' filter);
 * - `str` methods with arguments (`strip('\n')`, `split(sep, n)`, `find`, `format`, …), indexing by code point;
 * - jinja2's filters and tests (`title`, `indent`, `selectattr`, `map('lower')`, `is mapping`, …);
 * - attribute access on an undefined value raises (jinja2's `UndefinedError`), iterating one yields nothing;
 * - `range`, `dict`, `strftime_now` (Python's `strftime` directives) and `raise_exception` as globals.
 * The library's value classes are not exported, so they are taken from values it creates (`V`).
 */
import { Environment, Interpreter, parse, tokenize } from "@huggingface/jinja";

/** A runtime value of the library (IntegerValue, StringValue, ObjectValue, …). */
export interface Value {
  type: string;
  value: any;
  builtins: ReadonlyMap<string, Value>;
  __bool__(): { value: boolean };
  toString(): string;
}
type ValueClass = new (value?: any) => Value;
type Node = { type: string; [key: string]: any };

/** A template error raised by the template itself with `raise_exception(message)`. */
export class TemplateRaise extends Error {
  override name = "TemplateRaise";
}

/** The library's value classes, taken from values it makes. */
export const V = (() => {
  const env = new Environment();
  let n = 0;
  const classOf = (v: unknown) => (env.set(`v${n++}`, v) as object).constructor as ValueClass;
  const Fn = classOf(() => {});
  let kwargs: Value | undefined;
  const Null = classOf(null);
  env.variables.set("kw", new Fn((args: Value[]) => (kwargs = args.at(-1), new Null())) as any);
  new Interpreter(env).run(parse(tokenize("{% set t = (1, 2) %}{% set ns = namespace() %}{{ kw(a=1) }}")));
  return {
    Str: classOf(""),
    Int: classOf(1),
    Float: classOf(1.5),
    Bool: classOf(true),
    Null: classOf(null),
    Undef: classOf(undefined),
    Arr: classOf([]),
    Obj: classOf({}),
    Fn,
    Tuple: (env.variables.get("t") as object).constructor as ValueClass,
    Namespace: (env.variables.get("ns") as object).constructor as ValueClass,
    Kwargs: (kwargs as object).constructor as ValueClass,
  };
})();

/** `v instanceof C` without type narrowing (every value class has the same structural type here). */
const isA = (v: Value, C: ValueClass): boolean => v instanceof C;
const KIND = Symbol("kind");
const str = (s: string) => new V.Str(s);
const int = (n: number) => new V.Int(n);
const bool = (b: boolean) => new V.Bool(b);
const undef = () => new V.Undef();
const none = () => new V.Null();
const isStr = (v: Value) => isA(v, V.Str);
const isNum = (v: Value) => isA(v, V.Int) || isA(v, V.Float) || isA(v, V.Bool);
const isSeq = (v: Value) => isA(v, V.Arr); // every sequence kind (SeqKind)
const isDict = (v: Value) => isA(v, V.Obj); // includes keyword arguments
const isUndef = (v: Value) => isA(v, V.Undef);
const num = (v: Value): number => (isA(v, V.Bool) ? Number(v.value) : v.value);

/**
 * The Python type behind an array value. Lists and tuples are sequences; jinja2's `map`, `select`, `unique`, …
 * return generators (iterable once, always true, no len(), not JSON-serializable: `x|map(…)|tojson` raises in
 * transformers), `reverse` a list iterator, `dict.items()`/`keys()`/`values()` views, `range()` a range.
 */
export type SeqKind =
  | "list"
  | "tuple"
  | "generator"
  | "list_reverseiterator"
  | "dict_items"
  | "dict_keys"
  | "dict_values"
  | "range";
const ONE_SHOT = new Set<SeqKind>(["generator", "list_reverseiterator"]);
const INDEXABLE = new Set<SeqKind>(["list", "tuple", "range"]);
type SeqState = { kind: SeqKind; consumed: boolean; range?: number[] };

/** An array value of the given Python kind. */
export function pySeq(items: Value[], kind: SeqKind = "list", range?: number[]): Value {
  const a = new V.Arr(items);
  if (kind === "list") return a;
  (a as any)[KIND] = { kind, consumed: false, range } satisfies SeqState;
  if (ONE_SHOT.has(kind)) a.__bool__ = () => new V.Bool(true);
  return a;
}
export const pyTuple = (items: Value[]) => pySeq(items, "tuple");
const seqState = (v: Value): SeqState | undefined => (v as any)[KIND];
const kindOf = (v: Value): SeqKind => seqState(v)?.kind ?? (v.type === "TupleValue" ? "tuple" : "list");
const isTuple = (v: Value) => isSeq(v) && kindOf(v) === "tuple";
const isOneShot = (v: Value) => isSeq(v) && ONE_SHOT.has(kindOf(v));

/** Python's type name of a value, for error messages. */
function typeName(v: Value): string {
  if (isA(v, V.Str)) return "str";
  if (isA(v, V.Bool)) return "bool";
  if (isA(v, V.Int)) return "int";
  if (isA(v, V.Float)) return "float";
  if (isA(v, V.Null)) return "NoneType";
  if (isA(v, V.Undef)) return "Undefined";
  if (isSeq(v)) return kindOf(v);
  if (isDict(v)) return "dict";
  if (isA(v, V.Namespace)) return "Namespace";
  return "function";
}

// ---------------------------------------------------------------------------------------------------------
// Printing: str(), repr(), float repr, json.dumps

/** Python's `repr(float)`: the shortest round-trip digits, in exponent form below 1e-4 or from 1e16. */
export function pyFloat(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, e] = x.toExponential().split("e");
  const exp = Number(e);
  if (exp < -4 || exp >= 16) return `${mant}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  const sign = x < 0 ? "-" : "";
  const digits = mant.replace("-", "").replace(".", "");
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  const whole = digits.slice(0, exp + 1).padEnd(exp + 1, "0");
  return `${sign}${whole}.${digits.slice(exp + 1) || "0"}`;
}

/** Python's `repr(str)`: single quotes unless the text has a single quote and no double quote. */
function pyStrRepr(s: string): string {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = q;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === q || ch === "\\") out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20 || c === 0x7f) out += "\\x" + c.toString(16).padStart(2, "0");
    else if (ch !== " " && /[\p{C}\p{Z}]/u.test(ch)) {
      out += c <= 0xff
        ? "\\x" + c.toString(16).padStart(2, "0")
        : c <= 0xffff
        ? "\\u" + c.toString(16).padStart(4, "0")
        : "\\U" + c.toString(16).padStart(8, "0");
    } else out += ch;
  }
  return out + q;
}

/** Python's `repr()` of a value (how values inside lists and dicts print). */
export function pyRepr(v: Value): string {
  if (isStr(v)) return pyStrRepr(v.value);
  if (isUndef(v)) return "Undefined";
  if (isSeq(v)) {
    const kind = kindOf(v);
    if (ONE_SHOT.has(kind)) return `<${kind} object>`;
    if (kind === "range") {
      return `range(${seqState(v)!.range!.filter((x, i) => i < 2 || x !== 1).join(", ")})`;
    }
    const items = (v.value as Value[]).map(pyRepr);
    if (kind === "tuple") return items.length === 1 ? `(${items[0]},)` : `(${items.join(", ")})`;
    return kind === "list" ? `[${items.join(", ")}]` : `${kind}([${items.join(", ")}])`;
  }
  if (isDict(v)) {
    return `{${
      [...(v.value as Map<string, Value>)].map(([k, x]) => `${pyStrRepr(k)}: ${pyRepr(x)}`).join(", ")
    }}`;
  }
  if (isA(v, V.Namespace)) {
    return `<Namespace {${
      [...(v.value as Map<string, Value>)].map(([k, x]) => `${pyStrRepr(k)}: ${pyRepr(x)}`)
        .join(", ")
    }}>`;
  }
  return pyStr(v);
}

/** Python's `str()` of a value: what `{{ value }}` prints (undefined prints nothing). */
export function pyStr(v: Value): string {
  if (isStr(v)) return v.value;
  if (isA(v, V.Bool)) return v.value ? "True" : "False";
  if (isA(v, V.Int)) return String(v.value);
  if (isA(v, V.Float)) return pyFloat(v.value);
  if (isA(v, V.Null)) return "None";
  if (isUndef(v)) return "";
  if (isA(v, V.Fn)) return "<function>";
  return pyRepr(v);
}

/** Compare strings by code point (Python's order; JavaScript's `<` compares UTF-16 units). */
export function cmpCodePoints(a: string, b: string): number {
  const x = [...a], y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return x.length === y.length ? 0 : x.length < y.length ? -1 : 1;
}

export interface JsonOptions {
  indent?: number | string | null;
  separators?: [string, string] | null;
  sortKeys?: boolean;
  ensureAscii?: boolean;
}

function jsonString(s: string, ensureAscii: boolean): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i], c = s.charCodeAt(i);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || (ensureAscii && c > 0x7e)) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

/** Python's `json.dumps(value, ensure_ascii, indent, separators, sort_keys)`. */
export function pyJsonDumps(v: Value, opts: JsonOptions = {}, depth = 0): string {
  const indent = opts.indent === undefined || opts.indent === null
    ? null
    : typeof opts.indent === "string"
    ? opts.indent
    : " ".repeat(Math.max(0, opts.indent));
  const [itemSep, keySep] = opts.separators ?? (indent === null ? [", ", ": "] : [",", ": "]);
  if (isStr(v)) return jsonString(v.value, opts.ensureAscii ?? false);
  if (isA(v, V.Bool)) return v.value ? "true" : "false";
  if (isA(v, V.Int)) return String(v.value);
  if (isA(v, V.Float)) {
    const x = v.value as number;
    return Number.isNaN(x) ? "NaN" : !Number.isFinite(x) ? (x > 0 ? "Infinity" : "-Infinity") : pyFloat(x);
  }
  if (isA(v, V.Null)) return "null";
  let parts: string[];
  let open: string, close: string;
  if (isSeq(v) && (kindOf(v) === "list" || kindOf(v) === "tuple")) {
    parts = (v.value as Value[]).map((x) => pyJsonDumps(x, opts, depth + 1));
    [open, close] = ["[", "]"];
  } else if (isDict(v)) {
    let entries = [...(v.value as Map<string, Value>)];
    if (opts.sortKeys) entries = entries.sort(([a], [b]) => cmpCodePoints(a, b));
    parts = entries.map(([k, x]) =>
      `${jsonString(k, opts.ensureAscii ?? false)}${keySep}${pyJsonDumps(x, opts, depth + 1)}`
    );
    [open, close] = ["{", "}"];
  } else {
    throw new TypeError(`Object of type ${typeName(v)} is not JSON serializable`);
  }
  if (parts.length === 0) return open + close;
  if (indent === null) return open + parts.join(itemSep) + close;
  const inner = "\n" + indent.repeat(depth + 1);
  return open + inner + parts.join(itemSep + inner) + "\n" + indent.repeat(depth) + close;
}

// ---------------------------------------------------------------------------------------------------------
// Python str methods

// deno-lint-ignore no-control-regex -- Python's whitespace includes \x1c-\x1f
const PY_SPACE = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$/u;
const isPySpace = (ch: string) => PY_SPACE.test(ch);

/** Python's `str.strip/lstrip/rstrip(chars)`: whitespace when `chars` is null/undefined. */
export function pyStrip(
  s: string,
  chars: string | null = null,
  side: "both" | "left" | "right" = "both",
): string {
  const cps = [...s];
  const strip = chars === null ? isPySpace : (ch: string) => chars.includes(ch);
  let a = 0, b = cps.length;
  if (side !== "right") { while (a < b && strip(cps[a])) a++; }
  if (side !== "left") { while (b > a && strip(cps[b - 1])) b--; }
  return cps.slice(a, b).join("");
}

/** Python's `str.split(sep, maxsplit)` (and `rsplit` when `fromRight`). */
function pySplit(s: string, sep: string | null, maxsplit: number, fromRight: boolean): string[] {
  if (sep === "") throw new Error("ValueError: empty separator");
  if (sep === null) {
    const words: string[] = [];
    const cps = [...s];
    let i = 0;
    if (!fromRight) {
      while (i < cps.length) {
        while (i < cps.length && isPySpace(cps[i])) i++;
        if (i >= cps.length) break;
        if (maxsplit >= 0 && words.length === maxsplit) {
          words.push(pyStrip(cps.slice(i).join(""), null, "right"));
          break;
        }
        let j = i;
        while (j < cps.length && !isPySpace(cps[j])) j++;
        words.push(cps.slice(i, j).join(""));
        i = j;
      }
      return words;
    }
    const rev = pySplit([...s].reverse().join(""), null, maxsplit, false);
    return rev.map((w) => [...w].reverse().join("")).reverse();
  }
  const parts = s.split(sep);
  if (maxsplit < 0 || parts.length - 1 <= maxsplit) return parts;
  if (!fromRight) return [...parts.slice(0, maxsplit), parts.slice(maxsplit).join(sep)];
  const keep = parts.length - maxsplit;
  return [parts.slice(0, keep).join(sep), ...parts.slice(keep)];
}

/** Python's `str.splitlines(keepends)`. */
function pySplitLines(s: string, keepends = false): string[] {
  const out: string[] = [];
  // deno-lint-ignore no-control-regex -- Python's line boundaries include \x1c-\x1e
  const re = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/g;
  let last = 0;
  for (const m of s.matchAll(re)) {
    out.push(s.slice(last, keepends ? m.index! + m[0].length : m.index!));
    last = m.index! + m[0].length;
  }
  if (last < s.length) out.push(s.slice(last));
  return out;
}

const isCased = (ch: string) => ch.toLowerCase() !== ch.toUpperCase();

/** Python's `str.title()`: each run of cased letters starts upper-case, the rest lower-case. */
function pyTitle(s: string): string {
  let out = "", prevCased = false;
  for (const ch of s) {
    out += prevCased ? ch.toLowerCase() : ch.toUpperCase();
    prevCased = isCased(ch);
  }
  return out;
}

function pyCapitalize(s: string): string {
  const [first = "", ...rest] = [...s];
  return first.toUpperCase() + rest.join("").toLowerCase();
}

/** Python's `str.islower/isupper`: at least one cased character, all of them in that case. */
function pyIsCase(s: string, upper: boolean): boolean {
  const cased = [...s].filter(isCased);
  return cased.length > 0 && cased.every((ch) => (upper ? ch === ch.toUpperCase() : ch === ch.toLowerCase()));
}

/** Python's `str.format` for `{}`, `{0}` and `{name}` fields (no format specs or conversions). */
function pyFormat(s: string, args: Value[], kwargs: Map<string, Value>): string {
  let auto = 0;
  return s.replace(/\{\{|\}\}|\{([^{}]*)\}/g, (m, field: string | undefined) => {
    if (m === "{{") return "{";
    if (m === "}}") return "}";
    if (/[!:]/.test(field!)) throw new Error(`str.format: field "{${field}}" is not supported`);
    const v = field === "" ? args[auto++] : /^\d+$/.test(field!) ? args[Number(field)] : kwargs.get(field!);
    if (v === undefined) throw new Error(`IndexError: Replacement index for "{${field}}" out of range`);
    return pyStr(v);
  });
}

/** A code-point index into `s` for a UTF-16 index (Python indexes strings by code point). */
const cpIndex = (s: string, utf16: number) => utf16 < 0 ? -1 : [...s.slice(0, utf16)].length;

function optStr(v: Value | undefined, what: string): string | null {
  if (v === undefined || isA(v, V.Null)) return null;
  if (!isStr(v)) throw new TypeError(`${what} arg must be None or str`);
  return v.value;
}

function optInt(v: Value | undefined, def: number): number {
  if (v === undefined || isA(v, V.Null)) return def;
  if (!(isA(v, V.Int))) throw new TypeError(`'${typeName(v)}' object cannot be interpreted as an integer`);
  return v.value;
}

/** Split a call's arguments into positional values and keyword arguments. */
function splitArgs(args: Value[]): [Value[], Map<string, Value>] {
  const last = args.at(-1);
  if (last && isA(last, V.Kwargs)) return [args.slice(0, -1), last.value];
  return [args, new Map()];
}

type Method = (s: string, args: Value[], kwargs: Map<string, Value>) => Value;

const STRING_METHODS: Record<string, Method> = {
  strip: (s, [c]) => str(pyStrip(s, optStr(c, "strip"))),
  lstrip: (s, [c]) => str(pyStrip(s, optStr(c, "lstrip"), "left")),
  rstrip: (s, [c]) => str(pyStrip(s, optStr(c, "rstrip"), "right")),
  split: (s, [sep, n], kw) =>
    new V.Arr(
      pySplit(s, optStr(sep ?? kw.get("sep"), "split"), optInt(n ?? kw.get("maxsplit"), -1), false).map(str),
    ),
  rsplit: (s, [sep, n], kw) =>
    new V.Arr(
      pySplit(s, optStr(sep ?? kw.get("sep"), "rsplit"), optInt(n ?? kw.get("maxsplit"), -1), true).map(str),
    ),
  splitlines: (s, [k], kw) =>
    new V.Arr(pySplitLines(s, (k ?? kw.get("keepends"))?.__bool__().value).map(str)),
  startswith: (s, [p]) => bool(affixes(p, "startswith").some((x) => s.startsWith(x))),
  endswith: (s, [p]) => bool(affixes(p, "endswith").some((x) => s.endsWith(x))),
  replace: (s, [a, b, n], kw) => {
    const count = optInt(n ?? kw.get("count"), -1);
    const from = optStr(a, "replace") ?? "", to = optStr(b, "replace") ?? "";
    if (from === "") {
      // An empty pattern matches before every character and at the end.
      const cps = [...s], times = count < 0 ? cps.length + 1 : Math.min(count, cps.length + 1);
      return str(cps.map((c, i) => (i < times ? to : "") + c).join("") + (times > cps.length ? to : ""));
    }
    const parts = s.split(from);
    if (count < 0 || parts.length - 1 <= count) return str(parts.join(to));
    return str(parts.slice(0, count + 1).join(to) + from + parts.slice(count + 1).join(from));
  },
  find: (s, [x]) => int(cpIndex(s, s.indexOf(optStr(x, "find")!))),
  rfind: (s, [x]) => int(cpIndex(s, s.lastIndexOf(optStr(x, "rfind")!))),
  index: (s, [x]) => {
    const i = s.indexOf(optStr(x, "index")!);
    if (i < 0) throw new Error("ValueError: substring not found");
    return int(cpIndex(s, i));
  },
  count: (s, [x]) => {
    const sub = optStr(x, "count")!;
    return int(sub === "" ? [...s].length + 1 : s.split(sub).length - 1);
  },
  join: (s, [xs]) => {
    const items = iterate(xs ?? undef());
    if (items.some((x) => !isStr(x))) throw new TypeError("sequence item: expected str instance");
    return str(items.map((x) => x.value).join(s));
  },
  upper: (s) => str(s.toUpperCase()),
  lower: (s) => str(s.toLowerCase()),
  casefold: (s) => str(s.toLowerCase()),
  title: (s) => str(pyTitle(s)),
  capitalize: (s) => str(pyCapitalize(s)),
  swapcase: (s) =>
    str([...s].map((c) => (c === c.toUpperCase() ? c.toLowerCase() : c.toUpperCase())).join("")),
  isspace: (s) => bool(s.length > 0 && [...s].every(isPySpace)),
  isdigit: (s) => bool(/^\p{Nd}+$/u.test(s)),
  isnumeric: (s) => bool(/^\p{N}+$/u.test(s)),
  isalpha: (s) => bool(/^\p{L}+$/u.test(s)),
  isalnum: (s) => bool(/^[\p{L}\p{N}]+$/u.test(s)),
  islower: (s) => bool(pyIsCase(s, false)),
  isupper: (s) => bool(pyIsCase(s, true)),
  zfill: (s, [w]) => {
    const width = optInt(w, 0), sign = /^[+-]/.test(s) ? s[0] : "";
    return str(sign + s.slice(sign.length).padStart(width - sign.length, "0"));
  },
  center: (s, [w, f]) => str(pad(s, optInt(w, 0), optStr(f, "center") ?? " ", "center")),
  ljust: (s, [w, f]) => str(pad(s, optInt(w, 0), optStr(f, "ljust") ?? " ", "left")),
  rjust: (s, [w, f]) => str(pad(s, optInt(w, 0), optStr(f, "rjust") ?? " ", "right")),
  partition: (s, [x]) => {
    const sep = optStr(x, "partition")!, i = s.indexOf(sep);
    return pyTuple((i < 0 ? [s, "", ""] : [s.slice(0, i), sep, s.slice(i + sep.length)]).map(str));
  },
  rpartition: (s, [x]) => {
    const sep = optStr(x, "rpartition")!, i = s.lastIndexOf(sep);
    return pyTuple((i < 0 ? ["", "", s] : [s.slice(0, i), sep, s.slice(i + sep.length)]).map(str));
  },
  removeprefix: (s, [x]) => {
    const p = optStr(x, "removeprefix")!;
    return str(p && s.startsWith(p) ? s.slice(p.length) : s);
  },
  removesuffix: (s, [x]) => {
    const p = optStr(x, "removesuffix")!;
    return str(p && s.endsWith(p) ? s.slice(0, -p.length) : s);
  },
  format: (s, args, kw) => str(pyFormat(s, args, kw)),
};

function affixes(p: Value | undefined, what: string): string[] {
  if (p && isStr(p)) return [p.value];
  if (p && isSeq(p) && (p.value as Value[]).every(isStr)) return (p.value as Value[]).map((x) => x.value);
  throw new TypeError(`${what} first arg must be str or a tuple of str`);
}

/** Python's `str.center/ljust/rjust`: `center` puts the extra fill on the right when odd (CPython's rule). */
function pad(s: string, width: number, fill: string, how: "center" | "left" | "right"): string {
  const n = width - [...s].length;
  if (n <= 0) return s;
  if (how === "left") return s + fill.repeat(n);
  if (how === "right") return fill.repeat(n) + s;
  const left = Math.floor(n / 2) + (n & width & 1);
  return fill.repeat(left) + s + fill.repeat(n - left);
}

// ---------------------------------------------------------------------------------------------------------
// Python operators

/** Python's `==`. */
export function pyEq(a: Value, b: Value): boolean {
  if (isNum(a) && isNum(b)) return num(a) === num(b);
  if (isStr(a) && isStr(b)) return a.value === b.value;
  if (isA(a, V.Null) || isUndef(a)) return a.constructor === b.constructor;
  if (isSeq(a) && isSeq(b)) {
    if (isOneShot(a) || kindOf(a) !== kindOf(b)) return a === b;
    const x = a.value as Value[], y = b.value as Value[];
    return x.length === y.length && x.every((v, i) => pyEq(v, y[i]));
  }
  if (isDict(a) && isDict(b)) {
    const x = a.value as Map<string, Value>, y = b.value as Map<string, Value>;
    return x.size === y.size && [...x].every(([k, v]) => y.has(k) && pyEq(v, y.get(k)!));
  }
  return a === b;
}

/** Python's `<` as a sign: numbers, strings (by code point), and lists/tuples element by element. */
function pyCompare(a: Value, b: Value, op: string): number {
  if (isNum(a) && isNum(b)) return num(a) < num(b) ? -1 : num(a) > num(b) ? 1 : 0;
  if (isStr(a) && isStr(b)) return cmpCodePoints(a.value, b.value);
  if (isSeq(a) && isSeq(b) && kindOf(a) === kindOf(b) && INDEXABLE.has(kindOf(a))) {
    const x = a.value as Value[], y = b.value as Value[];
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      if (!pyEq(x[i], y[i])) return pyCompare(x[i], y[i], op);
    }
    return x.length - y.length;
  }
  throw new TypeError(`'${op}' not supported between instances of '${typeName(a)}' and '${typeName(b)}'`);
}

/** Python's `x in container`. */
function pyContains(container: Value, x: Value): boolean {
  if (isStr(container)) {
    if (!isStr(x)) throw new TypeError(`'in <string>' requires string as left operand, not ${typeName(x)}`);
    return container.value.includes(x.value);
  }
  if (isSeq(container)) return iterate(container).some((y) => pyEq(y, x)); // a generator is consumed
  if (isDict(container)) return isStr(x) && (container.value as Map<string, Value>).has(x.value);
  if (isUndef(container)) return false;
  throw new TypeError(`argument of type '${typeName(container)}' is not iterable`);
}

function pyArith(op: string, a: Value, b: Value): Value {
  const float = isA(a, V.Float) || isA(b, V.Float);
  const x = num(a), y = num(b);
  const make = (r: number) => (float ? new V.Float(r) : int(r));
  if ((op === "/" || op === "//" || op === "%") && y === 0) {
    throw new Error(
      `ZeroDivisionError: ${op === "/" ? "division by zero" : "integer division or modulo by zero"}`,
    );
  }
  switch (op) {
    case "+":
      return make(x + y);
    case "-":
      return make(x - y);
    case "*":
      return make(x * y);
    case "/":
      return new V.Float(x / y);
    case "//":
      return make(Math.floor(x / y));
    case "%":
      return make(x - y * Math.floor(x / y));
  }
  throw new Error(`unsupported operator ${op}`);
}

/** Longest string or list a template may build by `*` (a bound on memory, far above any prompt). */
export const MAX_REPEAT_LENGTH = 1 << 24;

function repeatTimes(v: Value, unit: number): number {
  if (!(isA(v, V.Int) || isA(v, V.Bool))) {
    throw new TypeError(`can't multiply sequence by non-int of type '${typeName(v)}'`);
  }
  const n = Math.max(0, num(v));
  if (n * unit > MAX_REPEAT_LENGTH) {
    throw new RangeError(`repetition result longer than ${MAX_REPEAT_LENGTH}`);
  }
  return n;
}

/** The items of an iterable value as Python iterates it (strings by code point, dicts by key). */
function iterate(v: Value): Value[] {
  if (isSeq(v)) {
    const st = seqState(v);
    if (st && ONE_SHOT.has(st.kind)) {
      if (st.consumed) return [];
      st.consumed = true;
    }
    return v.value;
  }
  if (isStr(v)) return [...(v.value as string)].map(str);
  if (isDict(v)) return [...(v.value as Map<string, Value>).keys()].map(str);
  if (isUndef(v)) return [];
  throw new TypeError(`'${typeName(v)}' object is not iterable`);
}

/** A Python length (`len()`), with undefined as empty. */
function pyLen(v: Value): number {
  if (isStr(v)) return [...(v.value as string)].length;
  if (isSeq(v) && !isOneShot(v)) return v.value.length;
  if (isDict(v)) return v.value.size;
  if (isUndef(v)) return 0;
  throw new TypeError(`object of type '${typeName(v)}' has no len()`);
}

// ---------------------------------------------------------------------------------------------------------
// Tests (`x is name`) and filters (`x | name(...)`)

type Test = (v: Value, ...args: Value[]) => boolean;

const TESTS: Record<string, Test> = {
  defined: (v) => !isUndef(v),
  undefined: (v) => isUndef(v),
  none: (v) => isA(v, V.Null),
  boolean: (v) => isA(v, V.Bool),
  true: (v) => isA(v, V.Bool) && v.value === true,
  false: (v) => isA(v, V.Bool) && v.value === false,
  integer: (v) => isA(v, V.Int),
  float: (v) => isA(v, V.Float),
  number: isNum,
  string: isStr,
  mapping: isDict,
  iterable: (v) => isStr(v) || isSeq(v) || isDict(v) || isUndef(v),
  sequence: (v) => isStr(v) || (isSeq(v) && INDEXABLE.has(kindOf(v))) || isDict(v) || isUndef(v),
  callable: (v) => isA(v, V.Fn),
  odd: (v) => num(v) % 2 !== 0,
  even: (v) => num(v) % 2 === 0,
  divisibleby: (v, n) => num(v) % num(n) === 0,
  lower: (v) => pyIsCase(pyStr(v), false),
  upper: (v) => pyIsCase(pyStr(v), true),
  in: (v, c) => pyContains(c, v),
  eq: (a, b) => pyEq(a, b),
  ne: (a, b) => !pyEq(a, b),
  lt: (a, b) => pyCompare(a, b, "<") < 0,
  le: (a, b) => pyCompare(a, b, "<=") <= 0,
  gt: (a, b) => pyCompare(a, b, ">") > 0,
  ge: (a, b) => pyCompare(a, b, ">=") >= 0,
  sameas: (a, b) => a === b || (isA(a, V.Null) && isA(b, V.Null)),
};
Object.assign(TESTS, {
  equalto: TESTS.eq,
  "==": TESTS.eq,
  "!=": TESTS.ne,
  lessthan: TESTS.lt,
  "<": TESTS.lt,
  "<=": TESTS.le,
  greaterthan: TESTS.gt,
  ">": TESTS.gt,
  ">=": TESTS.ge,
});

function runTest(name: string, v: Value, args: Value[]): boolean {
  const test = TESTS[name];
  if (!test) throw new Error(`No test named '${name}'.`);
  return test(v, ...args);
}

/** jinja2's attribute lookup by a dotted path (`"function.name"`, `"0"`), for selectattr/map/sort/groupby. */
function attrPath(v: Value, path: Value): Value {
  const parts = isStr(path) ? (path.value as string).split(".") : [String(path.value)];
  let cur = v;
  for (const p of parts) cur = getItem(cur, /^\d+$/.test(p) ? int(Number(p)) : str(p));
  return cur;
}

/** `obj[key]` as jinja2's `getitem`: a missing key or index is undefined. */
function getItem(obj: Value, key: Value): Value {
  if (isDict(obj) || isA(obj, V.Namespace)) {
    return isStr(key) ? (obj.value as Map<string, Value>).get(key.value) ?? undef() : undef();
  }
  if ((isStr(obj) || (isSeq(obj) && INDEXABLE.has(kindOf(obj)))) && isA(key, V.Int)) {
    const items = isStr(obj) ? [...(obj.value as string)] : (obj.value as Value[]);
    const i = key.value < 0 ? items.length + key.value : key.value;
    const item = items[i];
    return item === undefined ? undef() : isStr(obj) ? str(item as string) : (item as Value);
  }
  return undef();
}

/** Sort key comparison for `sort`/`unique`/`min`/`max`/`dictsort`: strings compared case-insensitively by default. */
function sortCompare(a: Value, b: Value, caseSensitive: boolean): number {
  const fold = (v: Value) => (!caseSensitive && isStr(v) ? str(v.value.toLowerCase()) : v);
  return pyCompare(fold(a), fold(b), "<");
}

/** Python's `round()` to `digits` decimals: the nearest value, exact binary ties to even. */
function pyRound(x: number, digits: number): number {
  if (!Number.isFinite(x) || Math.abs(x) >= 1e15) return x;
  if (digits < 0) return pyRound(x / 10 ** -digits, 0) * 10 ** -digits;
  const d = Math.min(digits, 70);
  const exact = Math.abs(x).toFixed(d + 30); // the value's decimal expansion, far past the cut
  const head = exact.slice(0, exact.indexOf(".") + 1 + d), rest = exact.slice(head.length);
  const tie = /^50*$/.test(rest);
  const r = tie && Number(head.replace(".", "").at(-1)) % 2 === 0
    ? Number(head)
    : Number(Math.abs(x).toFixed(d));
  return x < 0 || Object.is(x, -0) ? -r : r;
}

function toInt(v: Value, def: Value): Value {
  if (isA(v, V.Int)) return v;
  if (isA(v, V.Bool)) return int(Number(v.value));
  if (isA(v, V.Float)) return int(Math.trunc(v.value));
  if (isStr(v)) {
    const s = pyStrip(v.value).replaceAll("_", "");
    if (/^[+-]?\d+$/.test(s)) return int(Number(s));
    const f = Number(s);
    if (s !== "" && Number.isFinite(f)) return int(Math.trunc(f));
  }
  return def;
}

function toFloat(v: Value, def: Value): Value {
  if (isNum(v)) return new V.Float(num(v));
  if (isStr(v)) {
    const s = pyStrip(v.value).toLowerCase();
    const f = s === "inf" || s === "+inf"
      ? Infinity
      : s === "-inf"
      ? -Infinity
      : s === "nan"
      ? NaN
      : Number(s);
    if (s !== "" && !Number.isNaN(f) || s === "nan") return new V.Float(f);
  }
  return def;
}

/** jinja2's `indent` filter (3.1): lines after the first, blank ones only with `blank`. */
function indentText(s: string, width: Value, first: boolean, blank: boolean): string {
  const ind = isStr(width) ? width.value as string : " ".repeat(num(width));
  const lines = pySplitLines(s + "\n");
  let out: string;
  if (blank) out = lines.join("\n" + ind);
  else {
    out = lines.shift() ?? "";
    if (lines.length) out += "\n" + lines.map((l) => (l ? ind + l : l)).join("\n");
  }
  return first ? ind + out : out;
}

const HTML_ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&#34;",
  "'": "&#39;",
};

type FilterImpl = (
  self: PythonInterpreter,
  v: Value,
  args: Value[],
  kw: Map<string, Value>,
  env: Environment,
) => Value;

const arg = (args: Value[], kw: Map<string, Value>, i: number, name: string): Value | undefined =>
  args[i] ?? kw.get(name);
const flag = (v: Value | undefined) => v?.__bool__().value ?? false;

const FILTERS: Record<string, FilterImpl> = {
  tojson: (_, v, args, kw) => {
    const ind = arg(args, kw, 1, "indent");
    const sep = kw.get("separators");
    return str(pyJsonDumps(v, {
      ensureAscii: flag(arg(args, kw, 0, "ensure_ascii")),
      indent: ind === undefined || isA(ind, V.Null) ? null : isStr(ind) ? ind.value : num(ind),
      separators: sep && isSeq(sep) ? [pyStr(sep.value[0]), pyStr(sep.value[1])] : null,
      sortKeys: flag(arg(args, kw, 3, "sort_keys")),
    }));
  },
  string: (_, v) => str(pyStr(v)),
  safe: (_, v) => v,
  escape: (_, v) => str(pyStr(v).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c])),
  trim: (_, v, args, kw) => str(pyStrip(pyStr(v), optStr(arg(args, kw, 0, "chars"), "trim"))),
  upper: (_, v) => str(pyStr(v).toUpperCase()),
  lower: (_, v) => str(pyStr(v).toLowerCase()),
  capitalize: (_, v) => str(pyCapitalize(pyStr(v))),
  // jinja2's title: upper-case after whitespace, dashes and opening brackets (not Python's str.title).
  title: (_, v) => str(pyStr(v).split(/([-\s({[<]+)/u).filter((w) => w).map((w) => pyCapitalize(w)).join("")),
  wordcount: (_, v) => int((pyStr(v).match(/[\p{L}\p{N}\p{Mn}_]+/gu) ?? []).length),
  center: (_, v, args, kw) => str(pad(pyStr(v), num(arg(args, kw, 0, "width") ?? int(80)), " ", "center")),
  indent: (_, v, args, kw) =>
    str(indentText(
      pyStr(v),
      arg(args, kw, 0, "width") ?? int(4),
      flag(arg(args, kw, 1, "first")),
      flag(arg(args, kw, 2, "blank")),
    )),
  replace: (_, v, [a, b, n], kw) =>
    STRING_METHODS.replace(pyStr(v), [a, b, n ?? kw.get("count") ?? none()], kw),
  length: (_, v) => int(pyLen(v)),
  list: (_, v) => new V.Arr(iterate(v)),
  first: (_, v) => iterate(v)[0] ?? undef(),
  last: (_, v) => {
    if (isOneShot(v)) throw new TypeError(`'${typeName(v)}' object is not reversible`);
    return iterate(v).at(-1) ?? undef();
  },
  // jinja2: reversed(value) (an iterator), or a reversed list when value is not reversible (a generator).
  reverse: (_, v) => {
    if (isStr(v)) return str([...(v.value as string)].reverse().join(""));
    const oneShot = isOneShot(v);
    return pySeq([...iterate(v)].reverse(), oneShot ? "list" : "list_reverseiterator");
  },
  join: (_, v, args, kw) => {
    const attr = kw.get("attribute");
    const items = iterate(v).map((x) => (attr ? attrPath(x, attr) : x));
    return str(items.map(pyStr).join(pyStr(arg(args, kw, 0, "d") ?? str(""))));
  },
  sum: (_, v, args, kw) => {
    const attr = arg(args, kw, 0, "attribute");
    return iterate(v).reduce(
      (acc, x) => pyArith("+", acc, attr ? attrPath(x, attr) : x),
      arg(args, kw, 1, "start") ?? int(0),
    );
  },
  max: (_, v, args, kw) => extreme(v, args, kw, 1),
  min: (_, v, args, kw) => extreme(v, args, kw, -1),
  sort: (_, v, args, kw) => {
    const reverse = flag(arg(args, kw, 0, "reverse")), cs = flag(arg(args, kw, 1, "case_sensitive"));
    const attr = arg(args, kw, 2, "attribute");
    const key = (x: Value) => (attr ? attrPath(x, attr) : x);
    const sorted = [...iterate(v)].sort((a, b) => sortCompare(key(a), key(b), cs));
    return new V.Arr(reverse ? sorted.reverse() : sorted);
  },
  unique: (_, v, args, kw) => {
    const cs = flag(arg(args, kw, 0, "case_sensitive")), attr = arg(args, kw, 1, "attribute");
    const seen: Value[] = [];
    const out: Value[] = [];
    for (const x of iterate(v)) {
      let k = attr ? attrPath(x, attr) : x;
      if (!cs && isStr(k)) k = str(k.value.toLowerCase());
      if (!seen.some((s) => pyEq(s, k))) {
        seen.push(k);
        out.push(x);
      }
    }
    return pySeq(out, "generator");
  },
  batch: (_, v, args, kw) => {
    const size = num(arg(args, kw, 0, "linecount")!), fill = arg(args, kw, 1, "fill_with");
    const items = iterate(v), out: Value[] = [];
    for (let i = 0; i < items.length; i += size) {
      const row = items.slice(i, i + size);
      if (fill && !(isA(fill, V.Null))) { while (row.length < size) row.push(fill); }
      out.push(new V.Arr(row));
    }
    return pySeq(out, "generator");
  },
  items: (_, v) =>
    pySeq(isUndef(v) ? [] : [...(dictOf(v, "items"))].map(([k, x]) => pyTuple([str(k), x])), "generator"),
  dictsort: (_, v, args, kw) => {
    const cs = flag(arg(args, kw, 0, "case_sensitive"));
    const by = arg(args, kw, 1, "by")?.value ?? "key", reverse = flag(arg(args, kw, 2, "reverse"));
    const i = by === "value" ? 1 : 0;
    const pairs = [...dictOf(v, "dictsort")].map(([k, x]) => [str(k), x]);
    pairs.sort((a, b) => sortCompare(a[i], b[i], cs));
    if (reverse) pairs.reverse();
    return new V.Arr(pairs.map(pyTuple));
  },
  default: (_, v, args, kw) => {
    const dflt = arg(args, kw, 0, "default_value") ?? str("");
    return isUndef(v) || (flag(arg(args, kw, 1, "boolean")) && !v.__bool__().value) ? dflt : v;
  },
  int: (_, v, args, kw) => toInt(v, arg(args, kw, 0, "default") ?? int(0)),
  float: (_, v, args, kw) => toFloat(v, arg(args, kw, 0, "default") ?? new V.Float(0)),
  abs: (_, v) => (isA(v, V.Float) ? new V.Float(Math.abs(v.value)) : int(Math.abs(num(v)))),
  round: (_, v, args, kw) => {
    const digits = num(arg(args, kw, 0, "precision") ?? int(0));
    const method = pyStr(arg(args, kw, 1, "method") ?? str("common"));
    if (method === "common") {
      return isA(v, V.Float) ? new V.Float(pyRound(v.value, digits)) : int(pyRound(num(v), digits));
    }
    if (method !== "ceil" && method !== "floor") throw new Error("method must be common, ceil or floor");
    const f = method === "ceil" ? Math.ceil : Math.floor;
    return new V.Float(f(num(v) * 10 ** digits) / 10 ** digits);
  },
  select: (self, v, args, _kw, env) => selectItems(self, v, args, env, true, false),
  reject: (self, v, args, _kw, env) => selectItems(self, v, args, env, false, false),
  selectattr: (self, v, args, _kw, env) => selectItems(self, v, args, env, true, true),
  rejectattr: (self, v, args, _kw, env) => selectItems(self, v, args, env, false, true),
  map: (self, v, args, kw, env) => {
    const attr = kw.get("attribute");
    if (attr) {
      const dflt = kw.get("default");
      return pySeq(
        iterate(v).map((x) => {
          const r = attrPath(x, attr);
          return isUndef(r) && dflt ? dflt : r;
        }),
        "generator",
      );
    }
    const [name, ...rest] = args;
    if (!name || !isStr(name)) throw new Error("map requires a filter name or attribute=");
    const restKw = new Map([...kw].filter(([k]) => k !== "default"));
    return pySeq(iterate(v).map((x) => self.applyNamedFilter(name.value, x, rest, restKw, env)), "generator");
  },
  groupby: (_, v, args, kw) => {
    const attr = arg(args, kw, 0, "attribute")!, dflt = arg(args, kw, 1, "default");
    const cs = flag(arg(args, kw, 2, "case_sensitive"));
    const key = (x: Value) => {
      const k = attrPath(x, attr);
      return isUndef(k) && dflt ? dflt : k;
    };
    const sorted = [...iterate(v)].sort((a, b) => sortCompare(key(a), key(b), cs));
    const groups: { grouper: Value; list: Value[] }[] = [];
    for (const x of sorted) {
      const last = groups.at(-1);
      if (last && sortCompare(last.grouper, key(x), cs) === 0) last.list.push(x);
      else groups.push({ grouper: key(x), list: [x] });
    }
    return new V.Arr(
      groups.map((g) => new V.Obj(new Map([["grouper", g.grouper], ["list", new V.Arr(g.list)]]))),
    );
  },
};
Object.assign(FILTERS, { d: FILTERS.default, e: FILTERS.escape, count: FILTERS.length });

function dictOf(v: Value, what: string): Map<string, Value> {
  if (!isDict(v)) throw new TypeError(`${what}: expected a mapping, got ${typeName(v)}`);
  return v.value;
}

function extreme(v: Value, args: Value[], kw: Map<string, Value>, sign: number): Value {
  const cs = flag(arg(args, kw, 0, "case_sensitive")), attr = arg(args, kw, 1, "attribute");
  const key = (x: Value) => (attr ? attrPath(x, attr) : x);
  let best: Value | undefined;
  for (const x of iterate(v)) if (!best || sign * sortCompare(key(x), key(best), cs) > 0) best = x;
  return best ?? undef();
}

function selectItems(
  self: PythonInterpreter,
  v: Value,
  args: Value[],
  env: Environment,
  keep: boolean,
  byAttr: boolean,
): Value {
  const attr = byAttr ? args[0] : undefined;
  const [testName, ...testArgs] = byAttr ? args.slice(1) : args;
  return pySeq(
    iterate(v).filter((x) => {
      const subject = byAttr ? attrPath(x, attr!) : x;
      const ok = testName
        ? self.runNamedTest(pyStr(testName), subject, testArgs, env)
        : subject.__bool__().value;
      return ok === keep;
    }),
    "generator",
  );
}

// ---------------------------------------------------------------------------------------------------------
// strftime

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

/** Python's `datetime.strftime` (C locale) for the usual directives; `%-d` etc. drop the padding as on Linux. */
export function pyStrftime(d: Date, fmt: string): string {
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  const dayOfYear = Math.round(
    (Date.UTC(d.getFullYear(), d.getMonth(), d.getDate()) - Date.UTC(d.getFullYear(), 0, 1)) / 86400000,
  ) + 1;
  const h12 = d.getHours() % 12 || 12;
  const week = (startMonday: boolean) => {
    const wd = startMonday ? (d.getDay() + 6) % 7 : d.getDay();
    return Math.floor((dayOfYear - 1 - wd + 7) / 7);
  };
  const one = (c: string): string | undefined => {
    switch (c) {
      case "a":
        return DAYS[d.getDay()].slice(0, 3);
      case "A":
        return DAYS[d.getDay()];
      case "b":
      case "h":
        return MONTHS[d.getMonth()].slice(0, 3);
      case "B":
        return MONTHS[d.getMonth()];
      case "c":
        return pyStrftime(d, "%a %b %e %H:%M:%S %Y");
      case "C":
        return p(Math.floor(d.getFullYear() / 100));
      case "d":
        return p(d.getDate());
      case "D":
      case "x":
        return pyStrftime(d, "%m/%d/%y");
      case "e":
        return String(d.getDate()).padStart(2, " ");
      case "f":
        return p(d.getMilliseconds() * 1000, 6);
      case "F":
        return pyStrftime(d, "%Y-%m-%d");
      case "H":
        return p(d.getHours());
      case "I":
        return p(h12);
      case "j":
        return p(dayOfYear, 3);
      case "m":
        return p(d.getMonth() + 1);
      case "M":
        return p(d.getMinutes());
      case "n":
        return "\n";
      case "p":
        return d.getHours() < 12 ? "AM" : "PM";
      case "R":
        return pyStrftime(d, "%H:%M");
      case "S":
        return p(d.getSeconds());
      case "t":
        return "\t";
      case "T":
      case "X":
        return pyStrftime(d, "%H:%M:%S");
      case "u":
        return String(d.getDay() || 7);
      case "U":
        return p(week(false));
      case "w":
        return String(d.getDay());
      case "W":
        return p(week(true));
      case "y":
        return p(d.getFullYear() % 100);
      case "Y":
        return String(d.getFullYear());
      case "z":
      case "Z":
        return ""; // datetime.now() is naive
      case "%":
        return "%";
    }
    return undefined;
  };
  return fmt.replace(/%(-?)([a-zA-Z%])/g, (m, dash: string, c: string) => {
    const r = one(c);
    if (r === undefined) return m;
    return dash ? r.replace(/^[0 ]+(?=.)/, "") : r;
  });
}

// ---------------------------------------------------------------------------------------------------------
// Globals

function pyRange(args: Value[]): Value {
  const [a, b, c] = splitArgs(args)[0].map((v) => num(v));
  const [start, stop, step] = b === undefined ? [0, a, 1] : [a, b, c ?? 1];
  if (step === 0) throw new Error("ValueError: range() arg 3 must not be zero");
  const out: Value[] = [];
  if (Math.abs((stop - start) / step) > 1e6) throw new RangeError("range() longer than 1e6 items");
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(int(i));
  return pySeq(out, "range", [start, stop, step]);
}

/** The globals transformers gives a chat template (plus jinja2's `range`, `dict`, `namespace`, constants). */
export function pythonGlobals(now: () => Date): Environment {
  const env = new Environment();
  const fn = (name: string, f: (args: Value[]) => Value) => env.variables.set(name, new V.Fn(f) as any);
  for (
    const [k, v] of Object.entries({
      true: true,
      false: false,
      none: null,
      True: true,
      False: false,
      None: null,
    })
  ) {
    env.set(k, v);
  }
  fn("raise_exception", (args) => {
    throw new TemplateRaise(args.length ? pyStr(splitArgs(args)[0][0] ?? str("")) : "");
  });
  fn("strftime_now", (args) => str(pyStrftime(now(), pyStr(splitArgs(args)[0][0] ?? str("")))));
  fn("range", pyRange);
  fn("dict", (args) => {
    const [pos, kw] = splitArgs(args);
    const from = pos[0];
    const pairs = !from
      ? []
      : isDict(from)
      ? [...from.value as Map<string, Value>]
      : iterate(from).map((p) => {
        const [k, v] = iterate(p);
        if (!k || !isStr(k) || !v) throw new TypeError("dict() takes a mapping or (str, value) pairs");
        return [k.value as string, v] as [string, Value];
      });
    const out = new Map<string, Value>(pairs);
    for (const [k, v] of kw) out.set(k, v);
    return new V.Obj(out);
  });
  return env;
}

// ---------------------------------------------------------------------------------------------------------
// The interpreter

/** Node types that are statements: their value is their rendered output (or nothing). */
const STATEMENTS = new Set(["Set", "If", "For", "Macro", "CallStatement", "Break", "Continue", "Comment"]);
const DICT_METHODS = new Set(["get", "items", "keys", "values"]);

interface InterpreterInternals {
  evaluate(node: Node | undefined, env: Environment): Value;
  evaluateArguments(args: Node[], env: Environment): [Value[], Map<string, Value>];
  applyFilter(operand: Value, filter: Node, env: Environment): Value;
  evaluateBinaryExpression(node: Node, env: Environment): Value;
  evaluateMemberExpression(node: Node, env: Environment): Value;
  evaluateTestExpression(node: Node, env: Environment): Value;
  evaluateBlock(statements: Node[], env: Environment): Value;
  evaluateFor(node: Node, env: Environment): Value;
}
const BaseInterpreter = Interpreter as unknown as new (env: Environment) => InterpreterInternals;

/**
 * The evaluation steps a render may take (every node evaluated and every loop iteration is one): nested loops
 * cannot run for ever. Real templates take about 50 per message; the budget grows with the conversation.
 */
export function stepBudget(items: number): number {
  return 500_000 + 200 * items;
}

/** `@huggingface/jinja`'s interpreter with jinja2-under-Python semantics where they differ (module comment). */
export class PythonInterpreter extends BaseInterpreter {
  #steps = 0;
  readonly #maxSteps: number;
  /** The iterable expressions of for loops (their values are adjusted as Python iterates them). */
  readonly #forIterables = new WeakSet<Node>();
  readonly #loopBodies = new WeakSet<Node[]>();

  /** `maxSteps`: see `stepBudget`. */
  constructor(env: Environment, maxSteps = stepBudget(0)) {
    super(env);
    this.#maxSteps = maxSteps;
  }

  #step(n = 1): void {
    this.#steps += n;
    if (this.#steps > this.#maxSteps) {
      throw new RangeError(`template evaluation exceeded ${this.#maxSteps} steps`);
    }
  }

  override evaluate(node: Node | undefined, env: Environment): Value {
    this.#step();
    const v = super.evaluate(node, env);
    if (node && this.#forIterables.has(node)) {
      // Every iteration is a step, even of an empty body.
      this.#step(isSeq(v) ? v.value.length : isDict(v) || isStr(v) ? pyLen(v) : 0);
      // What a for loop iterates: Python iterates strings by character, an undefined value as empty and a
      // generator once; tuples become unpackable arrays.
      if (isStr(v) || isUndef(v)) return new V.Arr(iterate(v));
      if (isSeq(v)) return new V.Arr(iterate(v).map((x) => (x.type === "TupleValue" ? pyTuple(x.value) : x)));
    }
    return v;
  }

  override evaluateFor(node: Node, env: Environment): Value {
    this.#forIterables.add(node.iterable.type === "SelectExpression" ? node.iterable.lhs : node.iterable);
    this.#loopBodies.add(node.body);
    return super.evaluateFor(node, env);
  }

  override evaluateBlock(statements: Node[], env: Environment): Value {
    // jinja2 runs each iteration of a loop body in a fresh scope: a `set` there does not reach the next one.
    if (this.#loopBodies.has(statements)) env = new Environment(env);
    let out = "";
    for (const s of statements) {
      const v = this.evaluate(s, env);
      if (!STATEMENTS.has(s.type)) out += pyStr(v);
      else if (isStr(v)) out += v.value;
    }
    return str(out);
  }

  override evaluateBinaryExpression(node: Node, env: Environment): Value {
    const op: string = node.operator.value;
    if (op === "and" || op === "or") return super.evaluateBinaryExpression(node, env);
    const a = this.evaluate(node.left, env), b = this.evaluate(node.right, env);
    switch (op) {
      case "~":
        return str(pyStr(a) + pyStr(b));
      case "==":
        return bool(pyEq(a, b));
      case "!=":
        return bool(!pyEq(a, b));
      case "in":
        return bool(pyContains(b, a));
      case "not in":
        return bool(!pyContains(b, a));
      case "<":
        return bool(pyCompare(a, b, op) < 0);
      case "<=":
        return bool(pyCompare(a, b, op) <= 0);
      case ">":
        return bool(pyCompare(a, b, op) > 0);
      case ">=":
        return bool(pyCompare(a, b, op) >= 0);
    }
    if (isUndef(a) || isUndef(b)) throw new Error(`UndefinedError: an operand of '${op}' is undefined`);
    if (isNum(a) && isNum(b) && op !== "**") return pyArith(op, a, b);
    if (op === "+") {
      if (isStr(a) && isStr(b)) return str(a.value + b.value);
      if (isSeq(a) && isSeq(b) && kindOf(a) === kindOf(b) && (kindOf(a) === "list" || isTuple(a))) {
        return pySeq([...a.value, ...b.value], kindOf(a));
      }
      if (isStr(a)) throw new TypeError(`can only concatenate str (not "${typeName(b)}") to str`);
    }
    if (op === "*") {
      const [s, n] = isNum(a) ? [b, a] : [a, b];
      if (isStr(s)) return str((s.value as string).repeat(repeatTimes(n, s.value.length)));
      if (isSeq(s) && (kindOf(s) === "list" || isTuple(s))) {
        return pySeq(Array.from({ length: repeatTimes(n, s.value.length) }, () => s.value).flat(), kindOf(s));
      }
    }
    if (op === "**" && isNum(a) && isNum(b)) {
      if (num(a) === 0 && num(b) < 0) {
        throw new Error("ZeroDivisionError: 0.0 cannot be raised to a negative power");
      }
      const float = isA(a, V.Float) || isA(b, V.Float) || num(b) < 0;
      return float ? new V.Float(num(a) ** num(b)) : int(num(a) ** num(b));
    }
    throw new TypeError(`unsupported operand type(s) for ${op}: '${typeName(a)}' and '${typeName(b)}'`);
  }

  override evaluateMemberExpression(node: Node, env: Environment): Value {
    if (node.computed && node.property.type === "SliceExpression") {
      const obj = this.evaluate(node.object, env);
      if (isSeq(obj) && !INDEXABLE.has(kindOf(obj))) return undef(); // jinja2: not subscriptable
      return super.evaluateMemberExpression(node, env);
    }
    const obj = this.evaluate(node.object, env);
    const key = node.computed
      ? this.evaluate(node.property, env)
      : node.property.type === "IntegerLiteral"
      ? int(node.property.value)
      : str(node.property.value);
    if (isUndef(obj)) throw new Error(`UndefinedError: '${describe(node.object)}' is undefined`);
    if (isStr(obj) && isStr(key)) {
      const m = STRING_METHODS[key.value];
      return m ? new V.Fn((args: Value[]) => m(obj.value, ...splitArgs(args))) : undef();
    }
    if (isDict(obj) && isStr(key)) {
      const method = DICT_METHODS.has(key.value) &&
        (!node.computed || !(obj.value as Map<string, Value>).has(key.value));
      if (method) return this.dictMethod(obj, key.value);
      const own = (obj.value as Map<string, Value>).get(key.value);
      if (own) return own;
      if (key.value === "cycle" && obj.value.has("index0") && obj.value.has("revindex0")) {
        // `loop.cycle(a, b, …)`: the loop object of a for loop.
        const i = obj.value.get("index0").value as number;
        return new V.Fn((args: Value[]) => args[i % args.length] ?? undef());
      }
      return undef();
    }
    if (isSeq(obj) && isStr(key)) {
      if (key.value === "index" || key.value === "count") {
        return new V.Fn(([x]: Value[]) => {
          const items = obj.value as Value[];
          if (key.value === "count") return int(items.filter((y) => pyEq(y, x)).length);
          const i = items.findIndex((y) => pyEq(y, x));
          if (i < 0) throw new Error("ValueError: value is not in list");
          return int(i);
        });
      }
      return undef();
    }
    return getItem(obj, key);
  }

  private dictMethod(obj: Value, name: string): Value {
    const map = obj.value as Map<string, Value>;
    return new V.Fn((args: Value[]) => {
      const [pos] = splitArgs(args);
      switch (name) {
        case "get":
          return (isStr(pos[0]) ? map.get(pos[0].value) : undefined) ?? pos[1] ?? none();
        case "items":
          return pySeq([...map].map(([k, v]) => pyTuple([str(k), v])), "dict_items");
        case "keys":
          return pySeq([...map.keys()].map(str), "dict_keys");
        default:
          return pySeq([...map.values()], "dict_values");
      }
    });
  }

  override evaluateTestExpression(node: Node, env: Environment): Value {
    const r = this.runNamedTest(node.test.value, this.evaluate(node.operand, env), [], env);
    return bool(node.negate ? !r : r);
  }

  runNamedTest(name: string, v: Value, args: Value[], _env: Environment): boolean {
    return runTest(name, v, args);
  }

  override applyFilter(operand: Value, filter: Node, env: Environment): Value {
    const call = filter.type === "CallExpression";
    const name: string = call ? filter.callee.value : filter.value;
    const [args, kw] = call ? this.evaluateArguments(filter.args, env) : [[], new Map<string, Value>()];
    return this.applyNamedFilter(name, operand, args, kw, env);
  }

  applyNamedFilter(name: string, v: Value, args: Value[], kw: Map<string, Value>, env: Environment): Value {
    const f = FILTERS[name];
    if (f) return f(this, v, args, kw, env);
    if (args.length || kw.size) throw new Error(`No filter named '${name}' (with arguments).`);
    return super.applyFilter(v, { type: "Identifier", value: name }, env);
  }
}

/** A short source-like name of an expression, for error messages. */
function describe(node: Node): string {
  if (node.type === "Identifier") return node.value;
  if (node.type === "MemberExpression" && !node.computed) {
    return `${describe(node.object)}.${node.property.value}`;
  }
  return node.type;
}
