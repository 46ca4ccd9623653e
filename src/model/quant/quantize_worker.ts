/** Worker of QuantizePool: encodes one run of float32 values with the reference quantizer of its type. */
import { quantize } from "../ggml.ts";
import type { GGMLType } from "../types.ts";

interface WorkerScope {
  onmessage: ((e: MessageEvent<{ id: number; type: GGMLType; x: Float32Array }>) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
}
const scope = self as unknown as WorkerScope;

scope.onmessage = (e) => {
  const { id, type, x } = e.data;
  try {
    const out = quantize(type, x);
    scope.postMessage({ id, out }, [out.buffer as ArrayBuffer]);
  } catch (err) {
    scope.postMessage({ id, error: (err as Error).message ?? String(err) });
  }
};
