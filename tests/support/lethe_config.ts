/** lethe_config bytes of a small valid model (dim 64, 2 layers, 4 heads over 2 KV heads of 16, vocab 32). */
import { encodeConfig, type LetheConfig } from "../../src/engine/native.ts";

/** A small valid configuration. */
const SMALL: LetheConfig = {
  dim: 64,
  nLayers: 2,
  nHeads: 4,
  nKVHeads: 2,
  headDim: 16,
  ffnDim: 96,
  vocabSize: 32,
  normEps: 1e-5,
  ropeTheta: 10000,
  ropeStyle: 0,
  maxThreads: 1,
  device: 0,
  kvType: 0,
  parallelWork: 0,
};

/** The small configuration with `c` overridden. */
export function config(c: Partial<LetheConfig> = {}): Uint8Array<ArrayBuffer> {
  return encodeConfig({ ...SMALL, ...c });
}
