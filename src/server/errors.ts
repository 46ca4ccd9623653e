/**
 * Typed errors of the service. Domain code (inference, turns, sessions, auth, rate limits) throws these and
 * knows nothing of HTTP; `http/errors.ts` maps each kind to a status and the OpenAI error body, once, at the
 * edge.
 */
import { SessionCorruptError } from "../session/store.ts";

/** What went wrong, in the service's terms (each kind has exactly one HTTP mapping). */
export type ErrorKind =
  | "invalid" // the request is wrong: a bad value, a prompt that does not fit, a policy mismatch
  | "unauthenticated" // no or a wrong API key
  | "not_found" // unknown model, session or route (also another key's session)
  | "conflict" // the session is busy, or changed underneath this turn
  | "too_large" // the request body exceeds the limit
  | "rate_limited" // the queue is full or the key's rate is exceeded (retry later)
  | "cancelled" // the client went away
  | "internal" // a fault of the service or its store
  | "unavailable" // not ready yet, or draining for shutdown (retry later)
  | "timeout"; // the request did not finish in time

export class ServiceError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** The request field at fault (OpenAI `param`), if one is. */
    readonly param: string | null = null,
    /** A stable machine-readable code (`session_busy`, `queue_full`, …). */
    readonly code: string | null = null,
    /** When the client may retry (rate_limited, unavailable). */
    readonly retryAfterSec?: number,
  ) {
    super(message);
    this.name = "ServiceError";
  }
}

export const invalid = (message: string, param: string | null = null, code: string | null = null) =>
  new ServiceError("invalid", message, param, code);

export const notFound = (message: string, param: string | null = null, code: string | null = null) =>
  new ServiceError("not_found", message, param, code);

export const conflict = (message: string, param: string | null, code: string) =>
  new ServiceError("conflict", message, param, code);

export const unauthenticated = (message: string) =>
  new ServiceError("unauthenticated", message, null, "invalid_api_key");

export const rateLimited = (message: string, retryAfterSec: number, code: string) =>
  new ServiceError("rate_limited", message, null, code, retryAfterSec);

export const unavailable = (message: string, code = "not_ready", retryAfterSec = 5) =>
  new ServiceError("unavailable", message, null, code, retryAfterSec);

export const shuttingDown = () => unavailable("The server is shutting down.", "shutting_down");

export const internal = (
  message = "internal server error",
  param: string | null = null,
  code = "internal_error",
) => new ServiceError("internal", message, param, code);

export const cancelled = () => new ServiceError("cancelled", "The request was cancelled.", null, "cancelled");

export const timedOut = (ms: number) =>
  new ServiceError("timeout", `The request did not finish within ${ms} ms.`, null, "timeout");

/** A session's turn is refused while another one holds its lease. */
export const sessionBusy = (id: string) =>
  conflict(
    `Session '${id}' is busy: another turn is in progress. Wait for it to finish, then retry.`,
    "session_id",
    "session_busy",
  );

/**
 * A session store operation failed: a damaged record is `internal` (`session_corrupted`: retrying will not
 * help); anything else (unreachable, full, erroring) is `unavailable` with a short Retry-After — the request
 * changed nothing that a retry could trip over, because stores commit atomically. The store's own message
 * (hosts, paths) stays in the log.
 */
export function storeFailure(err: unknown): ServiceError {
  if (err instanceof ServiceError) return err;
  if (err instanceof SessionCorruptError) {
    return internal("The session is damaged in the store.", "session_id", "session_corrupted");
  }
  if (
    /disk is full|no space left|SQLITE_FULL|quota|file too large|OOM command not allowed/i.test(String(err))
  ) {
    return unavailable("The session store is out of space; retry later.", "store_full", 30);
  }
  return unavailable("The session store is unavailable; retry shortly.", "store_unavailable", 1);
}
