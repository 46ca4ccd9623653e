/**
 * The one place where errors become HTTP: every error response of the service is
 * `{ error: { message, type, param, code } }` with the status of its kind (never a stack trace).
 */
import { HTTPException } from "hono/http-exception";
import { type ErrorKind, invalid, ServiceError } from "../errors.ts";

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "not_found_error"
  | "conflict_error"
  | "rate_limit_error"
  | "server_error"
  | "service_unavailable"
  | "timeout_error";

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Status and OpenAI error type of each kind of service error. */
export const HTTP_OF_KIND: Record<ErrorKind, { status: number; type: ErrorType }> = {
  invalid: { status: 400, type: "invalid_request_error" },
  unauthenticated: { status: 401, type: "authentication_error" },
  not_found: { status: 404, type: "not_found_error" },
  conflict: { status: 409, type: "conflict_error" },
  too_large: { status: 413, type: "invalid_request_error" },
  rate_limited: { status: 429, type: "rate_limit_error" },
  cancelled: { status: 499, type: "invalid_request_error" },
  internal: { status: 500, type: "server_error" },
  unavailable: { status: 503, type: "service_unavailable" },
  timeout: { status: 504, type: "timeout_error" },
};

export interface HttpError {
  status: number;
  body: ErrorBody;
  headers: Record<string, string>;
}

const INTERNAL: HttpError = {
  status: 500,
  body: {
    error: { message: "internal server error", type: "server_error", param: null, code: "internal_error" },
  },
  headers: {},
};

/**
 * Any thrown value → status, body and headers. Unknown errors become a bare 500 (`unknown` says so, so the
 * caller can log what it hides).
 */
export function httpError(err: unknown): HttpError & { unknown: boolean } {
  if (err instanceof ServiceError) {
    const { status, type } = HTTP_OF_KIND[err.kind];
    const headers: Record<string, string> = {};
    if (err.retryAfterSec !== undefined) {
      headers["retry-after"] = String(Math.max(1, Math.ceil(err.retryAfterSec)));
    }
    return {
      status,
      body: { error: { message: err.message, type, param: err.param, code: err.code } },
      headers,
      unknown: false,
    };
  }
  if (err instanceof HTTPException) {
    // Hono's own: a body that is not JSON (400) or too large (413).
    if (err.status === 400) {
      return httpError(invalid("Malformed JSON in request body.", null, "invalid_json"));
    }
    if (err.status === 413) {
      return httpError(new ServiceError("too_large", err.message, null, "body_too_large"));
    }
    return {
      status: err.status,
      body: { error: { message: err.message, type: "invalid_request_error", param: null, code: null } },
      headers: {},
      unknown: false,
    };
  }
  return { ...INTERNAL, unknown: true };
}

export function errorResponse(err: unknown, headers: Record<string, string> = {}): Response {
  const e = httpError(err);
  return new Response(JSON.stringify(e.body), {
    status: e.status,
    headers: { "content-type": "application/json", ...e.headers, ...headers },
  });
}

/** Turn zod issues into one 400 naming the offending field (`messages.0.content`). */
export function fromZodIssues(
  issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string; code?: string }>,
  target: string,
): ServiceError {
  const first = issues[0];
  const path = first?.path?.map((p) => String(p)).join(".") ?? "";
  const param = path || null;
  const where = param ? `'${param}'` : target === "json" ? "request body" : target;
  const message = first ? `Invalid ${where}: ${first.message}` : `Invalid ${target}`;
  return invalid(message, param, first?.code === "unrecognized_keys" ? "unknown_parameter" : "invalid_value");
}
