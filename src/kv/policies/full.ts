/** Full cache: never prunes, needs no scores. The reference every other policy is judged against. */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import { BasePolicy } from "../base.ts";
import type { Phase, PolicyShape, PruneEvent } from "../contract.ts";

export const schema = z.strictObject({});

export class FullPolicy extends BasePolicy {
  readonly name = "full";

  scoreRequest(_phase: Phase, _nNew: number): ScoreRequest | undefined {
    return undefined;
  }

  protected prune(_kv: SequenceKV, _phase: Phase, _nNew: number, _events: PruneEvent[]): void {}
}

export function create(params: z.infer<typeof schema>, shape: PolicyShape): FullPolicy {
  return new FullPolicy(params, shape);
}
