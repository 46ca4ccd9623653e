/**
 * Incremental decoding of token ids to text from per-token byte strings.
 *
 * Each token contributes a fixed byte string (empty for dropped special tokens). Bytes go through one streaming
 * UTF-8 decoder, so an incomplete multi-byte sequence is held back until it completes and invalid bytes become
 * U+FFFD exactly as a whole-sequence decode would produce them: streaming and whole decoding agree for every
 * split. Up to `stripSpaces` leading 0x20 bytes are removed at the start of the text and, when `restartIds`
 * holds the id, again after that token (SentencePiece drops the leading space of the first piece after BOS).
 */
import type { StreamDecoder } from "./types.ts";

export interface PieceBytesTable {
  /** Bytes each token decodes to (empty for tokens decode drops). */
  bytes: Uint8Array[];
  /** Leading spaces to strip at the start of the text (and after a restart token). */
  stripSpaces: number;
  /** Tokens after which the leading-space rule applies again (e.g. BOS for SentencePiece). */
  restartIds: ReadonlySet<number>;
}

const EMPTY = new Uint8Array(0);

export class PieceStreamDecoder implements StreamDecoder {
  #table: PieceBytesTable;
  #utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  #strip: number;

  constructor(table: PieceBytesTable) {
    this.#table = table;
    this.#strip = table.stripSpaces;
  }

  push(id: number): string {
    const t = this.#table;
    if (t.restartIds.has(id)) {
      this.#strip = t.stripSpaces;
      return "";
    }
    let b = (Number.isInteger(id) && id >= 0 && id < t.bytes.length) ? t.bytes[id] : EMPTY;
    if (b.length === 0) return "";
    if (this.#strip > 0) {
      let k = 0;
      while (k < b.length && k < this.#strip && b[k] === 0x20) k++;
      // The rule concerns the first piece only: whatever it held, later pieces keep their spaces.
      this.#strip = k === b.length ? this.#strip - k : 0;
      b = b.subarray(k);
      if (b.length === 0) return "";
    }
    return this.#utf8.decode(b, { stream: true });
  }

  flush(): string {
    const s = this.#utf8.decode();
    this.#strip = this.#table.stripSpaces;
    return s;
  }
}

/** Whole-sequence decode through the streaming decoder (so both always agree). */
export function decodeAll(table: PieceBytesTable, ids: number[]): string {
  const d = new PieceStreamDecoder(table);
  let s = "";
  for (const id of ids) s += d.push(id);
  return s + d.flush();
}

const encoder = new TextEncoder();
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** `<0xAB>` → 0xAB, else -1. */
export function parseBytePiece(piece: string): number {
  const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
  return m ? parseInt(m[1], 16) : -1;
}

export function bytePiece(b: number): string {
  return `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;
}
