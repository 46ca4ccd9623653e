/**
 * The conformance suite on the TypeScript reference itself (tests/support/conformance.ts): against a second
 * instance its agreement checks are exact, and the contract's invariants (compaction, snapshots and round
 * trips, f16 rounding, batching, errors) are checked on the reference like on every other backend.
 */
import { conformance, EVERY_WEIGHT_CASE } from "./support/conformance.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";

conformance({
  name: "ts",
  skip: null,
  open: (config, weights, opts) => Promise.resolve(createTsBackend(config, weights, opts)),
  steps: { decode: 64, types: 6, random: 200, short: 10 },
  golden: true,
  quantError: true,
  weightTypes: EVERY_WEIGHT_CASE,
});
