/**
 * The fuzz runner: each target's cases run in a child process (worker.ts) under a watchdog. A case that does
 * not finish within `hangMs` is a hang: the process is killed and a new one carries on after that case (so
 * is a case that kills the process: out of memory, a crash of the runtime). The
 * report counts cases, clean rejections, accepted inputs and findings (crash, hang, memory), each with the
 * command that replays it.
 */
import { LINE_PREFIX, type WorkerMessage, type WorkerTask } from "./worker.ts";
import { TARGETS } from "./targets.ts";

export interface FuzzOptions {
  targets: string[];
  seed: number;
  /** Cases per target (from case `first`), or per target by name. */
  cases: number | Record<string, number>;
  first?: number;
  /** Wall-clock budget per target. */
  secondsPerTarget?: number;
  hangMs?: number;
  maxRssMb?: number;
  /** Save each finding's input under this directory. */
  saveDir?: string;
  log?: (line: string) => void;
}

export interface Finding {
  target: string;
  case: number;
  kind: "crash" | "hang" | "memory";
  error: string;
  replay: string;
  saved?: string;
}

export interface TargetReport {
  target: string;
  what: string;
  cases: number;
  accepted: number;
  rejected: number;
  findings: number;
  peakRssMb: number;
  ms: number;
}

export interface FuzzReport {
  seed: number;
  targets: TargetReport[];
  findings: Finding[];
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const hangMs = o.hangMs ?? 10_000;
  const report: FuzzReport = { seed: o.seed, targets: [], findings: [] };
  for (const name of o.targets) {
    if (!TARGETS[name]) {
      throw new Error(`unknown fuzz target ${name} (known: ${Object.keys(TARGETS).join(", ")})`);
    }
    const first = o.first ?? 0;
    const end = first + (typeof o.cases === "number" ? o.cases : o.cases[name] ?? 0);
    const deadline = Date.now() + (o.secondsPerTarget ?? 3600) * 1000;
    const tr: TargetReport = {
      target: name,
      what: TARGETS[name].what,
      cases: 0,
      accepted: 0,
      rejected: 0,
      findings: 0,
      peakRssMb: 0,
      ms: 0,
    };
    const t0 = performance.now();
    let next = first;
    while (next < end && Date.now() < deadline) {
      const r = await runWorker(name, {
        target: name,
        seed: o.seed,
        from: next,
        to: end,
        deadline,
        maxRssBytes: (o.maxRssMb ?? 2048) * 2 ** 20,
      }, hangMs);
      for (const f of r.findings) {
        const finding: Finding = {
          target: name,
          case: f.i,
          kind: f.kind,
          error: f.error,
          replay: `deno task fuzz --target ${name} --seed ${o.seed} --case ${f.i}`,
        };
        if (o.saveDir && f.input) {
          await Deno.mkdir(o.saveDir, { recursive: true });
          finding.saved = `${o.saveDir}/${name}-${o.seed}-${f.i}.bin`;
          await Deno.writeFile(finding.saved, f.input);
        }
        report.findings.push(finding);
        tr.findings++;
        o.log?.(`  ✗ ${name} case ${f.i}: ${f.kind}: ${f.error}\n    replay: ${finding.replay}`);
      }
      tr.cases += r.ran;
      tr.accepted += r.accepted;
      tr.rejected += r.rejected;
      tr.peakRssMb = Math.max(tr.peakRssMb, Math.round(r.peakRss / 2 ** 20));
      if (r.hungAt === null) break;
      next = r.hungAt + 1;
    }
    tr.ms = Math.round(performance.now() - t0);
    report.targets.push(tr);
    o.log?.(
      `${name.padEnd(15)} ${String(tr.cases).padStart(8)} cases  ${
        String(tr.rejected).padStart(8)
      } rejected cleanly  ` +
        `${
          String(tr.accepted).padStart(7)
        } accepted  ${tr.findings} findings  peak RSS ${tr.peakRssMb} MiB  ` +
        `${(tr.ms / 1000).toFixed(1)} s`,
    );
  }
  return report;
}

interface WorkerRun {
  ran: number;
  accepted: number;
  rejected: number;
  peakRss: number;
  findings: { i: number; kind: Finding["kind"]; error: string; input: Uint8Array | null }[];
  /** The case that hung (the worker was terminated), or null. */
  hungAt: number | null;
}

async function runWorker(name: string, task: WorkerTask, hangMs: number): Promise<WorkerRun> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", new URL("./worker.ts", import.meta.url).pathname, JSON.stringify(task)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const run: WorkerRun = { ran: 0, accepted: 0, rejected: 0, peakRss: 0, findings: [], hungAt: null };
  let current = task.from - 1;
  let last = performance.now();
  let setupDone = false, done = false, killed = false;
  // Setup (loading a model, starting a server) gets a longer allowance than a case.
  const watchdog = setInterval(() => {
    if (performance.now() - last < (setupDone ? hangMs : Math.max(60_000, 6 * hangMs))) return;
    killed = true;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, Math.min(250, hangMs / 4));
  let stderr = "";
  const errDone = (async () => {
    for await (const s of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderr = (stderr + s).slice(-4000);
    }
  })();
  let pending = "";
  for await (const s of child.stdout.pipeThrough(new TextDecoderStream())) {
    last = performance.now();
    pending += s;
    const lines = pending.split("\n");
    pending = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith(LINE_PREFIX)) continue; // printed by the code under test
      const m = JSON.parse(line.slice(LINE_PREFIX.length)) as WorkerMessage;
      if (m.t === "ready") setupDone = true;
      else if (m.t === "case") {
        current = m.i;
        Object.assign(run, { accepted: m.accepted, rejected: m.rejected, peakRss: m.peakRss });
      } else if (m.t === "finding") {
        run.findings.push({
          ...m,
          input: m.input === null ? null : Uint8Array.from(atob(m.input), (c) => c.charCodeAt(0)),
        });
      } else if (m.t === "done") {
        done = true;
        Object.assign(run, { ran: m.ran, accepted: m.accepted, rejected: m.rejected, peakRss: m.peakRss });
      }
    }
  }
  const status = await child.status;
  await errDone;
  clearInterval(watchdog);
  if (done) return run;
  if (!setupDone) {
    throw new Error(`fuzz target ${name}: setup failed: ${stderr.trim().split("\n").slice(-3).join(" | ")}`);
  }
  // Hung (killed by the watchdog) or died (out of memory, a crash of the runtime): carry on after that case.
  run.hungAt = current;
  run.ran = current - task.from + 1;
  run.findings.push({
    i: current,
    kind: killed ? "hang" : /out of memory|heap limit/i.test(stderr) ? "memory" : "crash",
    error: killed
      ? `no result after ${hangMs} ms`
      : `the process died (${status.signal ?? `exit ${status.code}`}): ${
        stderr.trim().split("\n").slice(-2).join(" | ")
      }`,
    input: null,
  });
  return run;
}
