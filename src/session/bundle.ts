/**
 * The stored form of a session: its history (token ids + chat messages) and its KV snapshot, as two
 * independently checksummed sections of one blob.
 *
 * The history is what can never be lost: when the snapshot is damaged (bad checksum, another model) the
 * session is rebuilt by re-prefilling it. Keeping it in the blob (not in the store's small head record) lets
 * conversations grow without bound on stores whose values are size-limited (Deno KV: 64 KiB).
 *
 * Layout (little-endian): "LSB1" | u32 history length | history (raw deflate of JSON) | u32 CRC-32 of the
 * history section | snapshot bytes (codec.ts format, with its own header and checksum).
 */
import zlib from "node:zlib";
import { crc32 } from "./codec.ts";

export interface SessionHistory {
  tokens: number[];
  messages: unknown[];
  /** One record per committed turn (the most recent `MAX_TURN_RECORDS`): the session's KV timeline. */
  turns?: TurnRecord[];
}

/**
 * What one committed turn did to the session's cache (token positions count the whole history): the figures
 * at the end of its generation, and what its commit then dropped.
 */
export interface TurnRecord {
  turn: number;
  /** History tokens before the turn's prompt, and after its reply. */
  start: number;
  end: number;
  prompt_tokens: number;
  cached_tokens: number;
  generated_tokens: number;
  /** Rows per layer and their K/V bytes when the generation ended. */
  kept_per_layer: number[];
  kv_bytes: number;
  /**
   * History tokens the commit dropped (with their rows) because the template's next render does not share
   * them, e.g. a finished turn's reasoning: the session stores `end − dropped_at_commit` tokens.
   */
  dropped_at_commit: number;
  /** The bundle's size after this turn (null for the newest record: the session's `stored_bytes` has it). */
  stored_bytes: number | null;
  pruning_rounds: number;
  /** Positions (tokens seen) of the steps that pruned, runs of consecutive steps as [first, last]. */
  prune_spans: [number, number][];
  /** Commit time (ms since the epoch). */
  at: number;
}

export const MAX_TURN_RECORDS = 1000;

const MAGIC = [0x4c, 0x53, 0x42, 0x31]; // "LSB1"
/** History sections beyond this size (uncompressed) are refused (zip-bomb guard). */
const MAX_HISTORY_BYTES = 256 * 2 ** 20;

export function encodeBundle(history: SessionHistory, snapshot: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(
    JSON.stringify({ tokens: history.tokens, messages: history.messages, turns: history.turns }),
  );
  const h = new Uint8Array(zlib.deflateRawSync(json, { level: 6 }));
  const out = new Uint8Array(4 + 4 + h.length + 4 + snapshot.length);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  dv.setUint32(4, h.length, true);
  out.set(h, 8);
  dv.setUint32(8 + h.length, crc32(h), true);
  out.set(snapshot, 12 + h.length);
  return out;
}

export interface DecodedBundle {
  /** null when the history section is damaged (`historyError` says how). */
  history: SessionHistory | null;
  historyError?: string;
  /** The snapshot section (still to be validated by decodeSnapshot); empty when the layout itself is broken. */
  snapshot: Uint8Array;
}

export function decodeBundle(bytes: Uint8Array): DecodedBundle {
  if (bytes.length < 12 || MAGIC.some((b, i) => bytes[i] !== b)) {
    return {
      history: null,
      historyError: "not a session bundle (bad magic or truncated)",
      snapshot: new Uint8Array(0),
    };
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hLen = dv.getUint32(4, true);
  if (12 + hLen > bytes.length) {
    return { history: null, historyError: "history section runs past the end", snapshot: new Uint8Array(0) };
  }
  const h = bytes.subarray(8, 8 + hLen);
  const snapshot = bytes.subarray(12 + hLen);
  if (dv.getUint32(8 + hLen, true) !== crc32(h)) {
    return { history: null, historyError: "history checksum mismatch", snapshot };
  }
  try {
    const json = zlib.inflateRawSync(h, { maxOutputLength: MAX_HISTORY_BYTES });
    const v = JSON.parse(new TextDecoder().decode(json)) as Partial<SessionHistory>;
    if (
      !Array.isArray(v.tokens) || !v.tokens.every((t) => Number.isInteger(t) && t >= 0) ||
      !Array.isArray(v.messages)
    ) {
      return { history: null, historyError: "history section has the wrong shape", snapshot };
    }
    const history: SessionHistory = { tokens: v.tokens, messages: v.messages };
    // turn records are a view, not history: malformed ones are dropped, never failing the section
    if (Array.isArray(v.turns)) {
      history.turns = v.turns.filter((t) => typeof t === "object" && t !== null && Number.isInteger(t.end));
    }
    return { history, snapshot };
  } catch (e) {
    return { history: null, historyError: `history section unreadable: ${(e as Error).message}`, snapshot };
  }
}
