/**
 * deno task generate --model PATH --prompt "..." [sampling flags] [--json]
 * Streams the prompt and its continuation to stdout; a summary (tokens/s, KV stats) goes to stderr. With
 * --json stdout is one line: {"prompt_tokens": [...], "tokens": [...], "text": "..."} (the generated ids,
 * an end-of-generation token included, and the text they decode to, stop strings applied).
 */
import { intFlag, numFlag, parseFlags, runMain, UsageError } from "./common.ts";
import { loadModel, SHARED_MODELS } from "../model/loader.ts";
import { BACKEND_CHOICES, type BackendChoice, openBackend } from "../engine/select.ts";
import { runSequence, Sequence } from "../engine/sequence.ts";
import type { PolicySpec } from "../kv/contract.ts";
import { parsePolicyText } from "../kv/policy_spec.ts";
import { createPolicy, parsePolicySpec } from "../kv/registry.ts";
import type { SamplingParams } from "../engine/sampler.ts";

const USAGE = `usage: deno task generate --model PATH --prompt TEXT [options]
  --model PATH            GGUF file or Hugging Face directory (default: $LETHE_MODEL or ../shared/models/stories260K.gguf)
  --prompt TEXT           prompt text (BOS is prepended when the model has one)
  --parse-special         turn special-token text in the prompt (<|im_start|>) into those tokens
  --json                  print {"prompt_tokens": [...], "tokens": [...], "text": "..."} instead of streaming
  --max-tokens N          tokens to generate (default 256)
  --steps N               llama2.c-style length: positions run through the model, BOS and prompt
                          included; the token sampled at the last position is printed too (overrides --max-tokens)
  --temperature T         0 = greedy (default 0)
  --top-k K --top-p P --min-p P --repeat-penalty R --repeat-window N --seed S
  --stop TEXT             stop string (repeatable)
  --ignore-eos            keep generating past the EOS token
  --backend NAME          ${BACKEND_CHOICES.join("|")} (default auto)
  --kv-policy SPEC        KV policy: lethe, lethe:mode=fixed,budget=128 or JSON (default full cache)
  --ctx N                 override the model's context length`;

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    model: { type: "string" },
    prompt: { type: "string" },
    "max-tokens": { type: "string" },
    steps: { type: "string" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "top-p": { type: "string" },
    "min-p": { type: "string" },
    "repeat-penalty": { type: "string" },
    "repeat-window": { type: "string" },
    seed: { type: "string" },
    stop: { type: "string", multiple: true },
    "ignore-eos": { type: "boolean" },
    "parse-special": { type: "boolean" },
    json: { type: "boolean" },
    backend: { type: "string" },
    "kv-policy": { type: "string" },
    ctx: { type: "string" },
  }, USAGE);
  if (f.prompt === undefined) throw new UsageError(`--prompt is required\n${USAGE}`);
  const backendChoice = (f.backend ?? "auto") as BackendChoice;
  if (!BACKEND_CHOICES.includes(backendChoice)) {
    throw new UsageError(`--backend must be one of ${BACKEND_CHOICES.join(", ")}, got "${f.backend}"`);
  }
  const sampling: SamplingParams = {
    temperature: numFlag("temperature", f.temperature, 0),
    topK: intFlag("top-k", f["top-k"], 0),
    topP: numFlag("top-p", f["top-p"], 1),
    minP: numFlag("min-p", f["min-p"], 0),
    repetitionPenalty: numFlag("repeat-penalty", f["repeat-penalty"], 1),
    repetitionWindow: intFlag("repeat-window", f["repeat-window"], 64),
    seed: f.seed === undefined ? undefined : intFlag("seed", f.seed, 0),
  };
  let policySpec: PolicySpec = { name: "full" };
  if (f["kv-policy"] !== undefined) {
    try {
      policySpec = parsePolicyText(f["kv-policy"]);
      parsePolicySpec(policySpec);
    } catch (e) {
      throw new UsageError(`--kv-policy: ${(e as Error).message}`);
    }
  }
  const ctx = f.ctx === undefined ? undefined : intFlag("ctx", f.ctx, 1, 1);
  const model = await loadModel(f.model ?? Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K, {
    contextLength: ctx,
  });
  const { backend, reason } = await openBackend(model, backendChoice);
  console.error(`[lethe] model ${model.name} on ${backend.name}: ${reason}`);

  const tok = model.tokenizer;
  const prompt = tok.encode(f.prompt, { addBos: tok.bosId >= 0, parseSpecial: f["parse-special"] === true });
  let maxTokens = intFlag("max-tokens", f["max-tokens"], 256);
  if (f.steps !== undefined) maxTokens = Math.max(0, intFlag("steps", f.steps, 0, 1) + 1 - prompt.length);
  if (prompt.length + maxTokens > model.config.contextLength) {
    throw new UsageError(
      `prompt (${prompt.length} tokens) + max tokens (${maxTokens}) exceed the context length ${model.config.contextLength}`,
    );
  }
  const policy = createPolicy(policySpec, {
    nLayers: model.config.nLayers,
    contextLength: model.config.contextLength,
  });
  const seq = new Sequence(backend, tok, {
    maxTokens,
    stop: f.stop ?? [],
    sampling,
    policy,
    stopAtEos: !f["ignore-eos"],
  });
  seq.feed(prompt);
  seq.start();
  const enc = new TextEncoder();
  const out = Deno.stdout;
  if (!f.json) await out.write(enc.encode(tok.decode(prompt)));
  const t0 = performance.now();
  let tFirst = 0, text = "";
  for await (const ev of runSequence(backend, seq)) {
    if (!tFirst) tFirst = performance.now();
    text += ev.text;
    if (ev.text && !f.json) await out.write(enc.encode(ev.text));
  }
  const t1 = performance.now();
  const result = { prompt_tokens: prompt, tokens: seq.tokens.slice(prompt.length), text };
  await out.write(enc.encode(f.json ? JSON.stringify(result) + "\n" : "\n"));
  const s = seq.stats();
  const decodeS = (t1 - tFirst) / 1000;
  console.error(
    `[lethe] prompt ${s.promptTokens} tok in ${
      (tFirst - t0).toFixed(1)
    } ms, generated ${s.generatedTokens} tok` +
      ` (${s.generatedTokens > 1 ? ((s.generatedTokens - 1) / decodeS).toFixed(1) : "-"} tok/s),` +
      ` finish ${seq.finishReason}, kv kept per layer [${s.keptPerLayer.join(",")}], ${s.kvBytes} B,` +
      ` ${s.pruneRounds} pruning rounds`,
  );
});
