/**
 * What every tokenizer here shares: BOS/EOS around the family's encoding, the end-of-generation set, and
 * decoding through a per-token byte table (so whole and streaming decoding agree).
 */
import type { DecodeOptions, EncodeOptions, StreamDecoder, Tokenizer } from "./types.ts";
import { decodeAll, type PieceBytesTable, PieceStreamDecoder, utf8 } from "./piece_decoder.ts";

export abstract class BaseTokenizer implements Tokenizer {
  abstract readonly vocabSize: number;
  abstract readonly bosId: number;
  abstract readonly eosId: number;
  abstract readonly addBos: boolean;
  abstract readonly addEos: boolean;
  abstract readonly eogIds: readonly number[];
  /** Whether the vocabulary asks for clean_up_tokenization_spaces (used by `decode(…, {cleanSpaces: true})`). */
  abstract readonly cleanSpaces: boolean;
  #eog: Set<number> | undefined;
  #table: PieceBytesTable | undefined;

  /** Appends the ids of `text` (without BOS/EOS) to `out`. */
  protected abstract encodeText(text: string, parseSpecial: boolean, out: number[]): void;
  /** Bytes per token and the leading-space rule (built once, on first use). */
  protected abstract decodeTable(): PieceBytesTable;
  /** The piece of an in-range id. */
  protected abstract pieceOf(id: number): string;
  /** The family's space clean-up of decoded text. */
  protected abstract cleanUp(text: string): string;
  abstract tokenId(text: string): number;

  /** Whether the model expects BOS in front of a prompt (the older name of `addBos`). */
  get addBosByDefault(): boolean {
    return this.addBos;
  }

  encode(text: string, opts?: EncodeOptions): number[] {
    const out: number[] = [];
    if ((opts?.addSpecial || opts?.addBos) && this.addBos) out.push(this.bosId);
    this.encodeText(text, opts?.parseSpecial === true, out);
    if (opts?.addSpecial && this.addEos && this.eosId >= 0) out.push(this.eosId);
    return out;
  }

  decode(ids: number[], opts?: DecodeOptions): string {
    const s = decodeAll(this.#decodeTable(), ids);
    return opts?.cleanSpaces && this.cleanSpaces ? this.cleanUp(s) : s;
  }

  streamDecoder(): StreamDecoder {
    return new PieceStreamDecoder(this.#decodeTable());
  }

  piece(id: number): string {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} out of range [0, ${this.vocabSize})`);
    }
    return this.pieceOf(id);
  }

  tokenBytes(id: number): Uint8Array {
    const b = this.#decodeTable().bytes[id];
    return b !== undefined && b.length > 0 ? b : utf8(this.piece(id));
  }

  isEog(id: number): boolean {
    return (this.#eog ??= new Set(this.eogIds)).has(id);
  }

  #decodeTable(): PieceBytesTable {
    return (this.#table ??= this.decodeTable());
  }
}
