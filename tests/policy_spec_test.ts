import { assertEquals, assertThrows } from "node:assert";
import { formatPolicyText, parsePolicyText, PolicySpecSyntaxError } from "../src/kv/policy_spec.ts";

Deno.test("policy spec text: name, name:k=v and JSON forms parse to the same spec", () => {
  assertEquals(parsePolicyText("lethe"), { name: "lethe" });
  assertEquals(parsePolicyText(" lethe: "), { name: "lethe" });
  const want = { name: "lethe", mode: "fixed", budget: 128, gamma: 0.9, adaptive_decay: false };
  assertEquals(parsePolicyText("lethe:mode=fixed,budget=128,gamma=0.9,adaptive_decay=false"), want);
  assertEquals(parsePolicyText(JSON.stringify(want)), want);
  assertEquals(parsePolicyText("h2o:budget=.25,sink=4"), { name: "h2o", budget: 0.25, sink: 4 });
  assertEquals(parsePolicyText("h2o:budget=1e3"), { name: "h2o", budget: 1000 });
  assertEquals(formatPolicyText(want), "lethe:mode=fixed,budget=128,gamma=0.9,adaptive_decay=false");
  assertEquals(parsePolicyText(formatPolicyText(want)), want);
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
    assertThrows(() => parsePolicyText(bad), PolicySpecSyntaxError, undefined, bad);
  }
});
