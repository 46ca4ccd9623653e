import assert from "node:assert/strict";
import {
  formatPolicyText,
  parsePolicyList,
  parsePolicyText,
  PolicySpecSyntaxError,
} from "../src/kv/policy_spec.ts";

Deno.test("policy spec text: name, name:k=v and JSON forms parse to the same spec", () => {
  assert.deepEqual(parsePolicyText("lethe"), { name: "lethe" });
  assert.deepEqual(parsePolicyText(" lethe: "), { name: "lethe" });
  const want = { name: "lethe", mode: "fixed", budget: 128, gamma: 0.9, adaptive_decay: false };
  assert.deepEqual(parsePolicyText("lethe:mode=fixed,budget=128,gamma=0.9,adaptive_decay=false"), want);
  assert.deepEqual(parsePolicyText(JSON.stringify(want)), want);
  assert.deepEqual(parsePolicyText("h2o:budget=.25,sink=4"), { name: "h2o", budget: 0.25, sink: 4 });
  assert.deepEqual(parsePolicyText("h2o:budget=1e3"), { name: "h2o", budget: 1000 });
  assert.deepEqual(formatPolicyText(want), "lethe:mode=fixed,budget=128,gamma=0.9,adaptive_decay=false");
  assert.deepEqual(parsePolicyText(formatPolicyText(want)), want);
});

Deno.test("policy spec text: malformed specs are one clear error", () => {
  for (
    const bad of [
      "",
      "Lethe",
      "lethe;budget=1",
      "lethe:budget",
      "lethe:=3",
      "lethe:name=h2o",
      "lethe:budget=1,budget=2",
      "{not json",
      "[1,2]",
      '{"budget":3}',
    ]
  ) {
    assert.throws(() => parsePolicyText(bad), PolicySpecSyntaxError, bad);
  }
});

Deno.test("policy spec lists (the CLIs comparing policies): names, name:k=v,… items, JSON arrays", () => {
  assert.deepEqual(parsePolicyList("streaming,h2o"), [{ name: "streaming" }, { name: "h2o" }]);
  assert.deepEqual(parsePolicyList("lethe:select=layer,farPower=0,lethe:farPower=0,lethe,h2o:budget=.5"), [
    { name: "lethe", select: "layer", farPower: 0 },
    { name: "lethe", farPower: 0 },
    { name: "lethe" },
    { name: "h2o", budget: 0.5 },
  ]);
  const specs = [{ name: "lethe", budget: 128 }, { name: "tova" }];
  assert.deepEqual(parsePolicyList(JSON.stringify(specs)), specs);
  assert.deepEqual(parsePolicyList(specs.map(formatPolicyText).join(",")), specs);
  for (const bad of ["budget=3,h2o", "lethe:mode=fixed:tau=5,", "[]", "[1]", "h2o,,tova"]) {
    assert.throws(() => parsePolicyList(bad), PolicySpecSyntaxError, bad);
  }
});
