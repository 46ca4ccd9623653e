/**
 * deno task tokenize --model PATH [--add-special] [--parse-special] [--json] [--stats]
 * Tokenizes stdin with a model's tokenizer, as llama.cpp's tokenizer does (a vocabulary-only GGUF is enough).
 */
import { intFlag, parseFlags, runMain, UsageError } from "./common.ts";
import { loadTokenizer } from "../model/loader.ts";

const USAGE = `usage: deno task tokenize --model PATH [options] < input
  --model PATH       GGUF file (a vocabulary-only GGUF is enough) or Hugging Face directory (tokenizer.json)
  --json             stdin is a JSON array of strings; stdout is a JSON array of their id arrays
                     (without it: stdin is one text, stdout its ids separated by spaces)
  --add-special      add BOS/EOS as the model's metadata says (llama.cpp's add_special)
  --parse-special    turn control-token text such as <|im_start|> into its token (llama.cpp's parse_special)
  --stats            print the token count and the encode speed to stderr
  --repeat N         with --stats: encode N times and also report the fastest pass (default 1)`;

/** The texts of a `--json` input: a JSON array of strings. */
export function parseJsonInput(input: string): string[] {
  let v: unknown;
  try {
    v = JSON.parse(input);
  } catch (e) {
    throw new Error(`stdin is not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(v)) throw new Error("stdin must be a JSON array of strings");
  const bad = v.findIndex((s) => typeof s !== "string");
  if (bad >= 0) throw new Error(`stdin[${bad}] is not a string`);
  return v as string[];
}

async function readStdin(): Promise<string> {
  const bytes = new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new Error("stdin is not valid UTF-8");
  }
}

if (import.meta.main) {
  await runMain(async () => {
    const f = parseFlags(Deno.args, {
      model: { type: "string" },
      json: { type: "boolean" },
      "add-special": { type: "boolean" },
      "parse-special": { type: "boolean" },
      stats: { type: "boolean" },
      repeat: { type: "string" },
    }, USAGE);
    const repeat = intFlag("repeat", f.repeat, 1, 1);
    if (f.model === undefined) throw new UsageError(`--model is required\n${USAGE}`);
    const tok = await loadTokenizer(f.model, (m) => console.error(`warning: ${m}`));
    const input = await readStdin();
    const texts = f.json ? parseJsonInput(input) : [input];
    const opts = { addSpecial: f["add-special"] === true, parseSpecial: f["parse-special"] === true };
    const times: number[] = [];
    let ids: number[][] = [];
    for (let r = 0; r < (f.stats ? repeat : 1); r++) {
      const t0 = performance.now();
      ids = texts.map((t) => tok.encode(t, opts));
      times.push(performance.now() - t0);
    }
    const out = f.json ? JSON.stringify(ids) : ids[0].join(" ");
    await Deno.stdout.write(new TextEncoder().encode(out + "\n"));
    if (f.stats) {
      const bytes = texts.reduce((n, t) => n + new TextEncoder().encode(t).length, 0);
      const tokens = ids.reduce((n, a) => n + a.length, 0);
      const speed = (ms: number) => `${ms.toFixed(1)} ms (${(bytes / 1e6 / (ms / 1e3)).toFixed(2)} MB/s)`;
      let line = `${texts.length} text(s), ${bytes} bytes, ${tokens} tokens in ${speed(times[0])}`;
      if (repeat > 1) line += `; fastest of ${repeat}: ${speed(Math.min(...times))}`;
      console.error(line);
    }
  });
}
