/**
 * Runs fuzz cases of one target in a child process (`deno run --no-check tests/fuzz/worker.ts TASK_JSON`), so
 * the runner (runner.ts) can kill a case that hangs or exhausts memory without going down with it. Writes one
 * protocol line per message on stdout: `case` before each case (the runner's watchdog), `finding` for each
 * unclean outcome and `done` at the end.
 */
import { encodeBase64 } from "./gen.ts";
import { caseSeed, Rng } from "./gen.ts";
import { TARGETS } from "./targets.ts";

export interface WorkerTask {
  target: string;
  seed: number;
  /** Cases [from, to). */
  from: number;
  to: number;
  /** Stop starting cases after this `Date.now()`. */
  deadline: number;
  maxRssBytes: number;
}

export type WorkerMessage =
  | { t: "ready"; setupMs: number }
  /** Before case i, with the counts of the cases before it. */
  | { t: "case"; i: number; accepted: number; rejected: number; peakRss: number }
  | { t: "finding"; i: number; kind: "crash" | "memory"; error: string; input: string | null }
  | { t: "done"; ran: number; accepted: number; rejected: number; peakRss: number; ms: number };

function describe(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`.slice(0, 500);
  return `non-Error thrown: ${String(e)}`.slice(0, 500);
}

/** Protocol lines start with this, so that whatever else the code under test prints is told apart. */
export const LINE_PREFIX = "\u0001fuzz ";

const out = Deno.stdout;
const enc = new TextEncoder();
function post(m: WorkerMessage): void {
  const b = enc.encode(LINE_PREFIX + JSON.stringify(m) + "\n");
  for (let off = 0; off < b.length;) off += out.writeSync(b.subarray(off));
}

async function run(task: WorkerTask): Promise<void> {
  const target = TARGETS[task.target];
  const t0 = performance.now();
  const ctx = await target.setup();
  post({ t: "ready", setupMs: performance.now() - t0 });
  const t1 = performance.now();
  let ran = 0, accepted = 0, rejected = 0, peakRss = 0;
  for (let i = task.from; i < task.to && Date.now() < task.deadline; i++) {
    post({ t: "case", i, accepted, rejected, peakRss });
    const input = target.gen(new Rng(caseSeed(task.seed, task.target, i)), ctx);
    try {
      await target.run(input, ctx);
      accepted++;
    } catch (e) {
      if (target.clean(e)) rejected++;
      else {
        const memory = e instanceof RangeError &&
          /allocation failed|Invalid (typed )?array length/i.test(e.message);
        post(
          {
            t: "finding",
            i,
            kind: memory ? "memory" : "crash",
            error: describe(e),
            input: target.bytes ? encodeBase64(target.bytes(input)) : null,
          },
        );
      }
    }
    ran++;
    if (ran % 8 === 0) {
      const rss = Deno.memoryUsage().rss;
      peakRss = Math.max(peakRss, rss);
      if (rss > task.maxRssBytes) {
        post(
          {
            t: "finding",
            i,
            kind: "memory",
            error: `resident memory ${Math.round(rss / 2 ** 20)} MiB after case ${i} (cap ${
              Math.round(task.maxRssBytes / 2 ** 20)
            } MiB)`,
            input: null,
          },
        );
        break;
      }
    }
  }
  await target.teardown?.(ctx);
  post(
    { t: "done", ran, accepted, rejected, peakRss, ms: performance.now() - t1 },
  );
}

if (import.meta.main) {
  await run(JSON.parse(Deno.args[0]) as WorkerTask);
  Deno.exit(0);
}
