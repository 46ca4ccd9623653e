/**
 * `deno task fuzz`: the fuzz targets (targets.ts) with many cases, reproducibly.
 *
 *   deno task fuzz [--target all|gguf,codec,…] [--cases 100000] [--seed N] [--minutes M] [--case N]
 *                  [--hang-ms 10000] [--max-rss-mb 2048] [--save DIR] [--json OUT]
 *
 * `--seed` defaults to a random one (printed); `--case N` replays one case of a seed. `--minutes` bounds
 * each target's time. Exit code 0 when nothing was found, 1 with findings (each printed with its replay
 * command; `--save` keeps their inputs), 2 for bad arguments.
 */
import { parseArgs } from "node:util";
import { runFuzz } from "./runner.ts";
import { TARGETS } from "./targets.ts";

export async function main(args: string[]): Promise<number> {
  let v;
  try {
    v = parseArgs({
      args,
      options: {
        target: { type: "string", default: "all" },
        cases: { type: "string", default: "10000" },
        seed: { type: "string" },
        minutes: { type: "string" },
        case: { type: "string" },
        "hang-ms": { type: "string", default: "10000" },
        "max-rss-mb": { type: "string", default: "2048" },
        save: { type: "string" },
        json: { type: "string" },
      },
      strict: true,
    }).values;
  } catch (e) {
    console.error(`fuzz: ${(e as Error).message.split("\n")[0]}`);
    return 2;
  }
  const targets = v.target === "all" ? Object.keys(TARGETS) : v.target!.split(",");
  const bad = targets.find((t) => !TARGETS[t]);
  const num = (name: string, s: string | undefined) => {
    if (s === undefined) return undefined;
    const n = Number(s);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a non-negative number (got ${s})`);
    return n;
  };
  let seed: number, cases: number, first: number | undefined, minutes: number | undefined;
  try {
    if (bad) throw new Error(`unknown target ${bad} (known: ${Object.keys(TARGETS).join(", ")})`);
    seed = num("seed", v.seed) ?? (crypto.getRandomValues(new Uint32Array(1))[0] >>> 0);
    first = num("case", v.case);
    cases = first !== undefined ? 1 : num("cases", v.cases)!;
    minutes = num("minutes", v.minutes);
  } catch (e) {
    console.error(`fuzz: ${(e as Error).message}`);
    return 2;
  }
  console.log(
    `fuzz: seed ${seed}, ${cases} cases per target${minutes ? `, at most ${minutes} min each` : ""}`,
  );
  const report = await runFuzz({
    targets,
    seed,
    cases,
    first,
    secondsPerTarget: minutes !== undefined ? minutes * 60 : undefined,
    hangMs: num("hang-ms", v["hang-ms"]),
    maxRssMb: num("max-rss-mb", v["max-rss-mb"]),
    saveDir: v.save,
    log: (l) => console.log(l),
  });
  const total = report.targets.reduce((n, t) => n + t.cases, 0);
  console.log(`fuzz: ${total} cases, ${report.findings.length} findings (seed ${seed})`);
  if (v.json) await Deno.writeTextFile(v.json, JSON.stringify(report, null, 2) + "\n");
  return report.findings.length ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
