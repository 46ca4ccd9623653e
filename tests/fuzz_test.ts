/**
 * The fuzz targets (tests/fuzz/) with a bounded number of cases and a fixed seed: every case ends in a clean
 * error or a valid result — no crash, hang or runaway memory. `deno task fuzz` runs many more.
 */
import assert from "node:assert/strict";
import { runFuzz } from "./fuzz/runner.ts";

const CASES = { gguf: 400, safetensors: 1000, tokenizer_json: 150, codec: 1000, bundle: 600, http: 300 };

Deno.test({
  name: `fuzz (seed 1): ${Object.entries(CASES).map(([t, n]) => `${t} ${n}`).join(", ")} cases, 0 findings`,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const lines: string[] = [];
    const report = await runFuzz({
      targets: Object.keys(CASES),
      seed: 1,
      cases: CASES,
      hangMs: 10_000,
      maxRssMb: 1536,
      log: (l) => lines.push(l),
    });
    console.log(lines.join("\n"));
    assert.deepEqual(report.findings, []);
    for (const t of report.targets) {
      assert.equal(t.cases, CASES[t.target as keyof typeof CASES], t.target);
      assert.ok(t.rejected > 0, `${t.target}: some inputs were rejected`);
      assert.ok(t.accepted > 0 || t.target === "bundle", `${t.target}: some inputs were accepted`);
    }
  },
});

Deno.test("fuzz findings, fixed: tokenizer.json with sparse huge ids or ids that are objects is a clean error", async () => {
  const { hfTokenizerFromJSON } = await import("../src/model/tokenizer/hf_bpe.ts");
  const { SHARED_MODELS } = await import("../src/model/loader.ts");
  const doc = JSON.parse(await Deno.readTextFile(`${SHARED_MODELS.tinystories656K}/tokenizer.json`));
  const withVocab = (extra: Record<string, unknown>) => ({
    ...doc,
    model: { ...doc.model, vocab: { ...doc.model.vocab, ...extra } },
  });
  const t0 = performance.now();
  assert.throws(() => hfTokenizerFromJSON(withVocab({ "<": 2 ** 32 })), /ids are sparse: id 4294967296/);
  assert.throws(() => hfTokenizerFromJSON(withVocab({ K: 353763655 })), /ids are sparse/);
  assert.ok(performance.now() - t0 < 5000, "refused before building tables by id");
  const evil = { toString: 7, sess: "\r\n" };
  assert.throws(
    () => hfTokenizerFromJSON(withVocab({ x: evil })),
    (e: Error) => e.constructor === Error && /vocab entry "x": bad id an object/.test(e.message),
  );
});
