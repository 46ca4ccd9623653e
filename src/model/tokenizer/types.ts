/** The tokenizer contract every model format provides. */
export interface Tokenizer {
  readonly vocabSize: number;
  /** -1 when the model has none. */
  readonly bosId: number;
  /** -1 when the model has none. */
  readonly eosId: number;
  /** Encode text; `addBos` prepends BOS (default false). Special-token text is not parsed. */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /** Decode a whole sequence to text (special tokens such as BOS/EOS are dropped). */
  decode(ids: number[]): string;
  /** A streaming decoder that yields text as tokens arrive, holding back incomplete UTF-8 sequences. */
  streamDecoder(): StreamDecoder;
  /** The raw piece of a token (for debugging and logit bias), e.g. "▁Once" or "<0x0A>". */
  piece(id: number): string;
}

export interface StreamDecoder {
  /** Feed one token; returns the newly completed text (possibly empty). */
  push(id: number): string;
  /** Flush held-back bytes (invalid UTF-8 becomes U+FFFD). */
  flush(): string;
}
