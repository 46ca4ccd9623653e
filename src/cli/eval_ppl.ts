/**
 * deno task eval:ppl --model PATH --text FILE [--window N] [--max-windows N] [--backend NAME]
 * Perplexity over a text file: stories separated by blank lines, each prefixed with BOS, concatenated and
 * evaluated in consecutive windows of the model's context (each window from an empty cache).
 */
import { intFlag, parseFlags, runMain, UsageError } from "./common.ts";
import { loadModel, REPO_ROOT, SHARED_MODELS } from "../model/loader.ts";
import { BACKEND_CHOICES, type BackendChoice, openBackend } from "../engine/select.ts";
import { nll, splitStories, tokenizeStories, windows } from "../eval/text.ts";
import { resolve } from "node:path";

const USAGE = `usage: deno task eval:ppl --model PATH --text FILE [options]
  --model PATH        GGUF file or Hugging Face directory (default ../shared/models/stories260K.gguf)
  --text FILE         text file, stories separated by blank lines (default ../shared/data/tinystories_val_dev.txt)
  --window N          window length in tokens (default: the model's context length)
  --max-windows N     evaluate at most N windows (default: all)
  --backend NAME      ${BACKEND_CHOICES.join("|")} (default auto)
  --json              print the result as one JSON line`;

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    model: { type: "string" },
    text: { type: "string" },
    window: { type: "string" },
    "max-windows": { type: "string" },
    backend: { type: "string" },
    json: { type: "boolean" },
  }, USAGE);
  const backendChoice = (f.backend ?? "auto") as BackendChoice;
  if (!BACKEND_CHOICES.includes(backendChoice)) {
    throw new UsageError(`--backend must be one of ${BACKEND_CHOICES.join(", ")}, got "${f.backend}"`);
  }
  const textPath = f.text ?? resolve(REPO_ROOT, "..", "shared", "data", "tinystories_val_dev.txt");
  let text: string;
  try {
    text = await Deno.readTextFile(textPath);
  } catch (e) {
    throw new UsageError(`cannot read --text ${textPath}: ${(e as Error).message}`);
  }
  const model = await loadModel(f.model ?? Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K);
  const window = intFlag("window", f.window, model.config.contextLength, 2);
  const maxWindows = intFlag("max-windows", f["max-windows"], Number.MAX_SAFE_INTEGER, 1);
  const { backend, reason } = await openBackend(model, backendChoice);
  console.error(`[lethe] model ${model.name} on ${backend.name}: ${reason}`);

  const stories = splitStories(text);
  if (stories.length === 0) throw new UsageError(`--text ${textPath} holds no text`);
  const ids = tokenizeStories(model.tokenizer, stories);
  const wins = windows(ids, window, maxWindows);
  const t0 = performance.now();
  let total = 0;
  let count = 0;
  const chunk = 256;
  for (const w of wins) {
    const kv = backend.createKV();
    for (let i = 0; i < w.length - 1; i += chunk) {
      const part = w.slice(i, Math.min(i + chunk, w.length - 1));
      const [out] = await backend.forward([{ kv, tokens: part, logits: "all" }]);
      const V = model.config.vocabSize;
      for (let t = 0; t < part.length; t++) {
        total += nll(out.logits.subarray(t * V, (t + 1) * V), w[i + t + 1]);
        count++;
      }
    }
    kv.free();
  }
  const secs = (performance.now() - t0) / 1000;
  const loss = total / count;
  const result = {
    model: model.name,
    backend: backend.name,
    text: textPath,
    stories: stories.length,
    tokens: ids.length,
    windows: wins.length,
    window,
    predicted: count,
    loss_nats: loss,
    ppl: Math.exp(loss),
    tokens_per_s: count / secs,
  };
  if (f.json) console.log(JSON.stringify(result));
  else {
    console.log(
      `${model.name}: perplexity ${result.ppl.toFixed(4)} (loss ${
        loss.toFixed(4)
      } nats/token) over ${count} predicted tokens` +
        ` in ${wins.length} windows of ${window} (${stories.length} stories, ${backend.name}, ${
          result.tokens_per_s.toFixed(0)
        } tok/s)`,
    );
  }
  backend.dispose();
});
