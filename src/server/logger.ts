/** Structured JSON logs (pino). Request handlers log through a child logger carrying the request id. */
import pino from "pino";

export type Logger = pino.Logger;

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino({ level, base: { svc: "lethe-edge" }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}
