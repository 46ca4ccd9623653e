/**
 * The host-side index of a sequence's KV cache, shared by every cache implementation (HostKVCache, the
 * native libraries' NativeKV, the WebGPU cache): per layer the number of rows and each row's original
 * position, the position the next token gets, and the one validation and application of a prune plan.
 * Where the K/V rows live (host arrays, library or GPU memory) is the cache's business; which rows there are
 * is this index's.
 */

/**
 * A prune plan: per layer, the rows to keep — indices into the layer as the cache holds it when the plan is
 * applied, strictly ascending — or null to leave the layer as it is. A KV policy makes one after a step; the
 * backend applies it at the start of the next step (`StepInput.compact`), or `SequenceKV.compact` applies it
 * at once. Kept rows keep their order and their original positions.
 */
export type PrunePlan = readonly (Int32Array | null)[];

/** Per-layer geometry of a sequence's KV cache. */
export interface KVShape {
  nLayers: number;
  nKVHeads: number;
  headDim: number;
}

const MIN_CAPACITY = 16;

/** Throws unless two caches have the same geometry (a snapshot must fit the cache it is loaded into). */
export function checkShape(have: KVShape, snap: KVShape): void {
  if (snap.nLayers !== have.nLayers || snap.nKVHeads !== have.nKVHeads || snap.headDim !== have.headDim) {
    throw new Error(`KV shape mismatch: have ${JSON.stringify(have)}, snapshot has ${JSON.stringify(snap)}`);
  }
}

/**
 * Throws a RangeError unless `plan` is a prune plan for a cache of `nLayers` layers whose layer l holds
 * `length(l)` rows: one entry per layer, each null or strictly ascending integers in [0, length(l)).
 */
export function checkPlan(plan: PrunePlan, nLayers: number, length: (layer: number) => number): void {
  if (!Array.isArray(plan) || plan.length !== nLayers) {
    throw new RangeError(
      `prune plan: expected ${nLayers} layers, got ${Array.isArray(plan) ? plan.length : plan}`,
    );
  }
  for (let l = 0; l < nLayers; l++) {
    const keep = plan[l];
    if (keep === null) continue;
    if (!(keep instanceof Int32Array)) {
      throw new RangeError(`prune plan: layer ${l} is not an Int32Array or null`);
    }
    const n = length(l);
    let prev = -1;
    for (let i = 0; i < keep.length; i++) {
      const src = keep[i];
      if (src <= prev || src >= n) {
        throw new RangeError(
          `compact: layer ${l}: keep indices must be strictly ascending in [0, ${n}), got ${src}`,
        );
      }
      prev = src;
    }
  }
}

export class KVIndex {
  readonly nLayers: number;
  /** Position the next appended token gets (number of tokens the sequence has seen). */
  nextPos = 0;
  /** Per layer number of rows. */
  readonly len: Int32Array;
  /** Per layer original position of each row (rows 0..len-1 valid; capacity-sized). */
  pos: Int32Array[];
  #freed = false;

  constructor(nLayers: number, capacity = MIN_CAPACITY) {
    this.nLayers = nLayers;
    this.len = new Int32Array(nLayers);
    this.pos = Array.from({ length: nLayers }, () => new Int32Array(Math.max(1, capacity)));
  }

  /** True until free(); throws after it. */
  live(): boolean {
    if (this.#freed) throw new Error("KV cache used after free()");
    return true;
  }

  layer(l: number): number {
    if (!Number.isInteger(l) || l < 0 || l >= this.nLayers) {
      throw new RangeError(`layer ${l} out of range [0, ${this.nLayers})`);
    }
    return l;
  }

  length(l: number): number {
    return this.len[this.layer(l)];
  }

  /** A view of layer l's positions (invalidated by the next change). */
  positions(l: number): Int32Array {
    return this.pos[this.layer(l)].subarray(0, this.len[l]);
  }

  /** Rows over all layers. */
  rows(): number {
    let n = 0;
    for (let l = 0; l < this.nLayers; l++) n += this.len[l];
    return n;
  }

  /** Room for `extra` more positions in layer l (grows geometrically). */
  reserve(l: number, extra: number): void {
    const need = this.len[l] + extra;
    if (need <= this.pos[l].length) return;
    let cap = Math.max(MIN_CAPACITY, this.pos[l].length);
    while (cap < need) cap *= 2;
    const p = new Int32Array(cap);
    p.set(this.pos[l].subarray(0, this.len[l]));
    this.pos[l] = p;
  }

  /** Record one row appended to layer l at `position`. */
  push(l: number, position: number): void {
    this.live();
    this.reserve(l, 1);
    this.pos[l][this.len[l]++] = position;
  }

  /** Record that a step appended `n` rows (positions nextPos, nextPos+1, …) to every layer. */
  append(n: number): void {
    this.live();
    for (let l = 0; l < this.nLayers; l++) {
      this.reserve(l, n);
      const p = this.pos[l], at = this.len[l];
      for (let t = 0; t < n; t++) p[at + t] = this.nextPos + t;
      this.len[l] = at + n;
    }
    this.nextPos += n;
  }

  /** Throws unless `plan` can be applied to this index (see checkPlan). */
  check(plan: PrunePlan): void {
    this.live();
    checkPlan(plan, this.nLayers, (l) => this.len[l]);
  }

  /** Apply a valid plan (check it first) to the lengths and positions. */
  compact(plan: PrunePlan): void {
    for (let l = 0; l < this.nLayers; l++) {
      const keep = plan[l];
      if (keep === null) continue;
      const p = this.pos[l];
      for (let i = 0; i < keep.length; i++) p[i] = p[keep[i]]; // keep[i] ≥ i: a forward copy is safe
      this.len[l] = keep.length;
    }
  }

  /**
   * The plan that forgets every row at a position ≥ `pos`: per layer the rows before it (null where none
   * goes). With `nextPos = pos` after it, the cache holds what it held when the sequence had seen `pos`
   * tokens, minus what was pruned. Throws a RangeError unless 0 ≤ pos ≤ nextPos.
   */
  rewindPlan(pos: number): PrunePlan {
    this.live();
    if (!Number.isInteger(pos) || pos < 0 || pos > this.nextPos) {
      throw new RangeError(`rewind: position ${pos} is outside [0, ${this.nextPos}]`);
    }
    const plan: (Int32Array | null)[] = [];
    for (let l = 0; l < this.nLayers; l++) {
      const p = this.positions(l);
      let n = 0;
      for (let i = 0; i < p.length; i++) if (p[i] < pos) n++;
      if (n === p.length) {
        plan.push(null);
        continue;
      }
      const keep = new Int32Array(n);
      for (let i = 0, k = 0; i < p.length; i++) if (p[i] < pos) keep[k++] = i;
      plan.push(keep);
    }
    return plan;
  }

  /** Replace everything with a snapshot's rows (`len[l]` positions of `pos[l]` per layer) and nextPos. */
  load(len: Int32Array, pos: Int32Array[], nextPos: number): void {
    this.live();
    for (let l = 0; l < this.nLayers; l++) {
      const n = len[l], src = pos[l];
      if (!(n >= 0) || src.length < n) {
        throw new Error(`KV snapshot layer ${l} holds fewer rows than its length ${n}`);
      }
      this.pos[l] = new Int32Array(Math.max(MIN_CAPACITY, n));
      this.pos[l].set(src.subarray(0, n));
      this.len[l] = n;
    }
    this.nextPos = nextPos;
  }

  free(): void {
    this.#freed = true;
    this.len.fill(0);
    this.pos = this.pos.map(() => new Int32Array(0));
  }
}
