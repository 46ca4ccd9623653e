/** Prometheus metrics (prom-client), one registry per app instance so several servers can share a process. */
import client from "prom-client";

export class Metrics {
  readonly registry = new client.Registry();
  readonly requests: client.Counter<"route" | "method" | "status">;
  readonly requestSeconds: client.Histogram<"route" | "method" | "status">;
  readonly ttftSeconds: client.Histogram<"endpoint">;
  readonly generatedTokens: client.Counter<string>;
  readonly promptTokens: client.Counter<"kind">;
  readonly decodeStepSeconds: client.Histogram<"batch">;
  readonly queueDepth: client.Gauge<string>;
  readonly activeSequences: client.Gauge<string>;
  readonly activeSessions: client.Gauge<string>;
  readonly kvBytes: client.Gauge<string>;
  readonly pruneRounds: client.Counter<string>;
  readonly storeSeconds: client.Histogram<"op">;
  readonly storeErrors: client.Counter<"op">;
  readonly cacheRebuilds: client.Counter<"reason">;
  readonly historyDropped: client.Counter<"at">;

  constructor() {
    const registers = [this.registry];
    this.requests = new client.Counter({
      name: "lethe_http_requests_total",
      help: "HTTP requests by route, method and status",
      labelNames: ["route", "method", "status"],
      registers,
    });
    this.requestSeconds = new client.Histogram({
      name: "lethe_http_request_duration_seconds",
      help: "HTTP request latency by route, method and status",
      labelNames: ["route", "method", "status"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.ttftSeconds = new client.Histogram({
      name: "lethe_time_to_first_token_seconds",
      help: "Time from request arrival to the first generated token",
      labelNames: ["endpoint"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.generatedTokens = new client.Counter({
      name: "lethe_generated_tokens_total",
      help: "Generated (sampled) tokens; rate() gives tokens/s",
      registers,
    });
    this.promptTokens = new client.Counter({
      name: "lethe_prompt_tokens_total",
      help: "Prompt tokens by kind (prefilled = computed this turn, cached = reused from a stored cache)",
      labelNames: ["kind"],
      registers,
    });
    this.decodeStepSeconds = new client.Histogram({
      name: "lethe_scheduler_step_seconds",
      help: "Duration of one batched forward step",
      labelNames: ["batch"],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
      registers,
    });
    this.queueDepth = new client.Gauge({
      name: "lethe_queue_depth",
      help: "Sequences waiting to join the batch",
      registers,
    });
    this.activeSequences = new client.Gauge({
      name: "lethe_active_sequences",
      help: "Sequences in the running batch",
      registers,
    });
    this.activeSessions = new client.Gauge({
      name: "lethe_active_sessions",
      help: "Session turns in progress (leases held by this instance)",
      registers,
    });
    this.kvBytes = new client.Gauge({
      name: "lethe_kv_bytes",
      help: "KV cache bytes held by running sequences",
      registers,
    });
    this.pruneRounds = new client.Counter({
      name: "lethe_kv_prune_rounds_total",
      help: "KV pruning rounds performed by policies",
      registers,
    });
    this.storeSeconds = new client.Histogram({
      name: "lethe_store_op_seconds",
      help: "Session store latency by operation",
      labelNames: ["op"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.storeErrors = new client.Counter({
      name: "lethe_store_errors_total",
      help: "Session store operations that failed (unreachable, full, erroring), by operation",
      labelNames: ["op"],
      registers,
    });
    this.cacheRebuilds = new client.Counter({
      name: "lethe_session_cache_rebuilds_total",
      help:
        "Session caches rebuilt instead of resumed, by reason (history_diverged, or why the stored one was unusable)",
      labelNames: ["reason"],
      registers,
    });
    this.historyDropped = new client.Counter({
      name: "lethe_session_history_dropped_tokens_total",
      help: "Session history tokens left out of the stored cache because the chat template's render of the " +
        "conversation does not contain them: at commit (a finished turn's reasoning) or at resume",
      labelNames: ["at"],
      registers,
    });
  }

  /** Time an async store operation. */
  async timeStore<T>(op: string, f: () => Promise<T>): Promise<T> {
    const end = this.storeSeconds.startTimer({ op });
    try {
      return await f();
    } catch (e) {
      this.storeErrors.inc({ op });
      throw e;
    } finally {
      end();
    }
  }
}
