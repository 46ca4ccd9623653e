/**
 * deno task template (--model PATH | --template FILE) --messages FILE [--vars JSON] [--add-generation-prompt]
 * Prints a conversation's prompt as the chat template renders it (src/model/chat_template.ts), exactly, with no
 * newline added.
 */
import { parseFlags, runMain, UsageError } from "./common.ts";
import {
  ChatTemplate,
  ChatTemplateError,
  ggufChatTemplate,
  type ModelChatTemplate,
} from "../model/chat_template.ts";
import { plainMetadata, readGGUFFile } from "../model/gguf.ts";
import { loadModel } from "../model/loader.ts";

const USAGE = `usage: deno task template (--model PATH | --template FILE) --messages FILE [options]
  --model PATH               GGUF file (its tokenizer.chat_template and BOS/EOS token text) or Hugging Face directory
  --template FILE            a jinja chat template file (overrides the model's; alone, BOS/EOS are "" unless --vars sets them)
  --messages FILE            JSON: an array of messages, or an object with "messages" and optionally "tools" and
                             "chat_template_kwargs" (a chat completion request body); "-" reads standard input
  --vars JSON                template variables, e.g. '{"bos_token":"<s>","eos_token":"</s>","enable_thinking":false}'
  --add-generation-prompt    append the assistant prefix
  --continue-final-message   the final assistant message is an unfinished prefix: stop right after its text`;

function parseJSON(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${what} is not valid JSON: ${(e as Error).message}`);
  }
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

async function readText(path: string, what: string): Promise<string> {
  try {
    return path === "-" ? await new Response(Deno.stdin.readable).text() : await Deno.readTextFile(path);
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

/** The chat template and BOS/EOS text of a GGUF file (metadata only) or a Hugging Face directory. */
async function modelTemplate(path: string): Promise<ModelChatTemplate> {
  const stat = await Deno.stat(path).catch(() => {
    throw new UsageError(`model not found: ${path}`);
  });
  if (!stat.isDirectory) return ggufChatTemplate(plainMetadata(await readGGUFFile(path)));
  const model = await loadModel(path);
  const tok = model.tokenizer;
  return {
    source: model.chatTemplate,
    bosToken: tok.bosId >= 0 ? tok.piece(tok.bosId) : "",
    eosToken: tok.eosId >= 0 ? tok.piece(tok.eosId) : "",
  };
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    model: { type: "string" },
    template: { type: "string" },
    messages: { type: "string" },
    vars: { type: "string" },
    "add-generation-prompt": { type: "boolean" },
    "continue-final-message": { type: "boolean" },
  }, USAGE);
  if (f.model === undefined && f.template === undefined) {
    throw new UsageError(`--model or --template is required\n${USAGE}`);
  }
  if (f.messages === undefined) throw new UsageError(`--messages is required\n${USAGE}`);

  const fromModel = f.model === undefined ? { bosToken: "", eosToken: "" } : await modelTemplate(f.model);
  const source = f.template === undefined ? fromModel.source : await readText(f.template, "template");
  if (source === undefined) {
    throw new UsageError(`${f.model} has no chat template (give one with --template)`);
  }

  const body = parseJSON(await readText(f.messages, "messages"), `--messages ${f.messages}`);
  const request = Array.isArray(body) ? { messages: body } : isObject(body) ? body : {};
  if (!Array.isArray(request.messages)) {
    throw new UsageError(`--messages must hold an array of messages or an object with "messages"`);
  }
  const kwargs = request.chat_template_kwargs ?? {};
  const vars = f.vars === undefined ? {} : parseJSON(f.vars, "--vars");
  if (!isObject(kwargs)) throw new UsageError(`"chat_template_kwargs" must be an object`);
  if (!isObject(vars)) throw new UsageError(`--vars must be a JSON object`);
  if (request.tools !== undefined && request.tools !== null && !Array.isArray(request.tools)) {
    throw new UsageError(`"tools" must be an array`);
  }

  try {
    const prompt = new ChatTemplate(source).render(request.messages, {
      addGenerationPrompt: f["add-generation-prompt"] ?? false,
      continueFinalMessage: f["continue-final-message"] ?? false,
      tools: request.tools as unknown[] | null | undefined,
      bosToken: fromModel.bosToken,
      eosToken: fromModel.eosToken,
      vars: { ...kwargs, ...vars },
    });
    await Deno.stdout.write(new TextEncoder().encode(prompt));
  } catch (e) {
    if (e instanceof ChatTemplateError && e.kind === "raise") {
      throw new Error(`the template raised: ${e.message}`);
    }
    throw e;
  }
});
