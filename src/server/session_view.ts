/**
 * Read-only views of a stored session (no service logic, nothing written): what its KV cache keeps — per
 * layer, the kept tokens' positions and scores beside the whole conversation's tokens, the policy's budgets or
 * triggers, the turn-by-turn timeline — and its transcript. Built from the committed record (bundle.ts:
 * history + snapshot), so a view shows exactly what the next turn resumes from.
 */
import { createPolicy } from "../kv/registry.ts";
import type { PolicyLimits } from "../kv/limits.ts";
import type { LoadedModel } from "../model/loader.ts";
import { decodeBundle, type TurnRecord } from "../session/bundle.ts";
import { decodeSnapshot, type SessionSnapshot, SnapshotError } from "../session/codec.ts";
import type { SessionMeta } from "./session_service.ts";

export interface LayerView {
  layer: number;
  /** Original positions (indices into `tokens`) of the rows the layer keeps, ascending. */
  positions: number[];
  /** The policy's score of each kept row (aligned with positions; 4 significant digits). */
  scores: number[];
}

export interface KvView {
  id: string;
  object: "session.kv";
  turns: number;
  policy: { name: string; params: Record<string, unknown> };
  /** Whether the policy scores rows (full and streaming do not: their scores are all 0). */
  scored: boolean;
  limits: PolicyLimits;
  n_layers: number;
  /** The conversation's token ids and each token's text (a control token's piece, e.g. "<s>"). */
  tokens: number[];
  token_texts: string[];
  /** Tokens in the cache (tokens past it are pending: fed with the next turn). */
  next_pos: number;
  layers: LayerView[];
  kv_bytes: number;
  stored_bytes: number;
  pruning_rounds: number;
  precision: string;
  /** One entry per committed turn (the most recent ones). */
  timeline: TurnRecord[];
  /** Why the stored cache could not be read (the next turn rebuilds it), or null. */
  snapshot_error: string | null;
}

export interface TranscriptMessage {
  role: string;
  content: string;
  reasoning_content?: string;
}

const round4 = (x: number) => (x === 0 || !Number.isFinite(x) ? 0 : Number(x.toPrecision(4)));

/** Each token's text as the stream decoder yields it in context (an empty one falls back to its piece). */
function tokenTexts(model: LoadedModel, tokens: number[]): string[] {
  const tok = model.tokenizer;
  const dec = tok.streamDecoder();
  return tokens.map((t) => {
    const s = dec.push(t);
    return s !== "" ? s : tok.piece(t);
  });
}

export function kvView(model: LoadedModel, id: string, meta: SessionMeta, blob: Uint8Array): KvView {
  const c = model.config;
  const policy = createPolicy({ ...meta.policy.params, name: meta.policy.name }, {
    nLayers: c.nLayers,
    contextLength: c.contextLength,
  });
  const bundle = meta.turns > 0 ? decodeBundle(blob) : null;
  let snap: SessionSnapshot | null = null;
  let snapshotError: string | null = null;
  if (bundle) {
    try {
      snap = decodeSnapshot(bundle.snapshot, { fingerprint: model.fingerprint });
      policy.importState(snap.policy.state, snap.kv);
    } catch (e) {
      snap = null;
      snapshotError = e instanceof SnapshotError ? e.code : (e as Error).message;
    }
  }
  const tokens = snap?.tokens ?? bundle?.history?.tokens ?? [];
  const layers: LayerView[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    const positions = snap ? Array.from(snap.kv.positions(l)) : [];
    const scores = snap ? Array.from(snap.policy.state.scores[l], round4) : [];
    layers.push({ layer: l, positions, scores });
  }
  const timeline = (bundle?.history?.turns ?? []).map((t) => ({ ...t }));
  if (timeline.length > 0) timeline[timeline.length - 1].stored_bytes = meta.storedBytes;
  return {
    id,
    object: "session.kv",
    turns: meta.turns,
    policy: { name: policy.name, params: { ...policy.params } },
    scored: policy.scoreRequest("decode", 1) !== undefined,
    limits: policy.limits(),
    n_layers: c.nLayers,
    tokens,
    token_texts: tokenTexts(model, tokens),
    next_pos: snap?.kv.nextPos ?? 0,
    layers,
    kv_bytes: meta.kvBytes,
    stored_bytes: meta.storedBytes,
    pruning_rounds: meta.pruneRounds,
    precision: meta.precision,
    timeline,
    snapshot_error: snapshotError,
  };
}

/** The stored conversation (chat turns; a completions-only session has none). */
export function transcript(meta: SessionMeta, blob: Uint8Array): TranscriptMessage[] {
  if (meta.turns === 0) return [];
  const messages = decodeBundle(blob).history?.messages ?? [];
  return messages.flatMap((m) => {
    if (typeof m !== "object" || m === null) return [];
    const { role, content, reasoning_content } = m as Record<string, unknown>;
    if (typeof role !== "string" || typeof content !== "string") return [];
    return [{ role, content, ...(typeof reasoning_content === "string" ? { reasoning_content } : {}) }];
  });
}
