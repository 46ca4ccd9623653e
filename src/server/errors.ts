/**
 * OpenAI-shaped API errors: every error response of the service is
 * `{ error: { message, type, param, code } }` with the matching HTTP status. Never a stack trace.
 */

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "conflict_error"
  | "rate_limit_error"
  | "server_error"
  | "service_unavailable"
  | "timeout_error";

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: ErrorType,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (e.g. Retry-After). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }

  toResponse(extraHeaders: Record<string, string> = {}): Response {
    return new Response(JSON.stringify(this.body()), {
      status: this.status,
      headers: { "content-type": "application/json", ...this.headers, ...extraHeaders },
    });
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, "invalid_request_error", message, param, code);

export const notFound = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(404, "not_found_error", message, param, code);

export const unauthorized = (message: string) =>
  new ApiError(401, "authentication_error", message, null, "invalid_api_key");

export const tooMany = (message: string, retryAfterSec: number, code: string) =>
  new ApiError(429, "rate_limit_error", message, null, code, {
    "retry-after": String(Math.max(1, Math.ceil(retryAfterSec))),
  });

export const unavailable = (message: string, code = "not_ready") =>
  new ApiError(503, "service_unavailable", message, null, code, { "retry-after": "5" });

export const internal = (message = "internal server error") =>
  new ApiError(500, "server_error", message, null, "internal_error");

/** Turn zod issues into one 400 naming the offending field (`messages.0.content`). */
export function fromZodIssues(
  issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string; code?: string }>,
  target: string,
): ApiError {
  const first = issues[0];
  const path = first?.path?.map((p) => String(p)).join(".") ?? "";
  const param = path || null;
  const where = param ? `'${param}'` : target === "json" ? "request body" : target;
  const message = first ? `Invalid ${where}: ${first.message}` : `Invalid ${target}`;
  return badRequest(
    message,
    param,
    first?.code === "unrecognized_keys" ? "unknown_parameter" : "invalid_value",
  );
}
