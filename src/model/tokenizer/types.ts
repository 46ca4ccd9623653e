/** The tokenizer contract every model format provides. */
export interface Tokenizer {
  readonly vocabSize: number;
  /** -1 when the model has none. */
  readonly bosId: number;
  /** -1 when the model has none. */
  readonly eosId: number;
  /** Whether the model's metadata asks for BOS / EOS around a prompt: what `encode(…, {addSpecial})` adds. */
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** Whether the vocabulary asks for clean_up_tokenization_spaces (what `decode(…, {cleanSpaces})` applies). */
  readonly cleanSpaces: boolean;
  /** Every end-of-generation token (EOS, EOT, `<|im_end|>`, `<|eot_id|>`, FIM pad …), ascending. */
  readonly eogIds: readonly number[];
  /** Whether generating `id` ends the generation. */
  isEog(id: number): boolean;
  /**
   * Encode text. `addSpecial` adds BOS/EOS as the metadata says (llama.cpp's add_special); the older `addBos`
   * adds only the BOS part of that. `parseSpecial` turns the text of control tokens
   * (`<|im_start|>`, `<|eot_id|>` …) into those tokens, as chat templates need (llama.cpp's parse_special);
   * user-defined tokens (e.g. Qwen3's `<think>`) are always matched, and a matched token is never split.
   */
  encode(text: string, opts?: EncodeOptions): number[];
  /** Decode a whole sequence to text (control tokens such as BOS/EOS are dropped); equals the streamed text. */
  decode(ids: number[], opts?: DecodeOptions): string;
  /** A streaming decoder that yields text as tokens arrive, holding back incomplete UTF-8 sequences. */
  streamDecoder(): StreamDecoder;
  /** The raw piece of a token (for debugging and logit bias), e.g. "▁Once", "<0x0A>" or "Ġthe". */
  piece(id: number): string;
  /**
   * The bytes one token stands for, as llama.cpp's `token_to_piece(…, special = true)`: what decoding gives
   * (" Once", "\n", part of a UTF-8 sequence), and the text of tokens that decoding drops (`<|im_start|>`,
   * `<s>`). For inspection tools (`/tokenize` with pieces, `/detokenize`).
   */
  tokenBytes(id: number): Uint8Array;
  /** The id of the token whose piece is exactly `text` (e.g. `tokenId("<think>")`), or -1. */
  tokenId(text: string): number;
}

export interface EncodeOptions {
  /** Add BOS/EOS as the model's metadata says (default false). */
  addSpecial?: boolean;
  /** Prepend BOS if the metadata asks for it, i.e. the BOS half of `addSpecial` (default false; older callers). */
  addBos?: boolean;
  /** Match control-token text in the input (default false). */
  parseSpecial?: boolean;
}

export interface DecodeOptions {
  /**
   * Apply the vocabulary's clean_up_tokenization_spaces rule (llama.cpp's detokenize: " ." → "." …) when the
   * vocabulary enables it. Default false, so that `decode` equals the streamed text.
   */
  cleanSpaces?: boolean;
}

export interface StreamDecoder {
  /** Feed one token; returns the newly completed text (possibly empty). */
  push(id: number): string;
  /** Flush held-back bytes (invalid UTF-8 becomes U+FFFD). */
  flush(): string;
}
