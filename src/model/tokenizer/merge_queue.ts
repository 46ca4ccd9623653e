/**
 * A binary min-heap of BPE merge candidates, ordered by (key, pos): the smallest key first and, among equal
 * keys, the leftmost position. SentencePiece-style BPE uses `key = -score` (highest score first); rank-based BPE
 * (tokenizer.json) uses `key = rank` (lowest rank first). Entries carry the ids of the two symbols they were
 * built from so a stale candidate (one of its symbols has since been merged) can be recognised and skipped.
 */
export class MergeQueue {
  #key = new Float64Array(64);
  #pos = new Int32Array(64);
  #right = new Int32Array(64);
  #leftId = new Int32Array(64);
  #rightId = new Int32Array(64);
  #newId = new Int32Array(64);
  #n = 0;

  get size(): number {
    return this.#n;
  }

  push(key: number, pos: number, right: number, leftId: number, rightId: number, newId: number): void {
    if (this.#n === this.#key.length) this.#grow();
    let i = this.#n++;
    // Sift up.
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#less(key, pos, this.#key[p], this.#pos[p])) break;
      this.#copy(p, i);
      i = p;
    }
    this.#set(i, key, pos, right, leftId, rightId, newId);
  }

  /** Removes the top entry into `out` ([key, pos, right, leftId, rightId, newId]); false when empty. */
  pop(out: number[]): boolean {
    if (this.#n === 0) return false;
    out[0] = this.#key[0];
    out[1] = this.#pos[0];
    out[2] = this.#right[0];
    out[3] = this.#leftId[0];
    out[4] = this.#rightId[0];
    out[5] = this.#newId[0];
    const last = --this.#n;
    if (last === 0) return true;
    const key = this.#key[last], pos = this.#pos[last];
    const right = this.#right[last], leftId = this.#leftId[last];
    const rightId = this.#rightId[last], newId = this.#newId[last];
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= last) break;
      const r = l + 1;
      const c = r < last && this.#less(this.#key[r], this.#pos[r], this.#key[l], this.#pos[l]) ? r : l;
      if (!this.#less(this.#key[c], this.#pos[c], key, pos)) break;
      this.#copy(c, i);
      i = c;
    }
    this.#set(i, key, pos, right, leftId, rightId, newId);
    return true;
  }

  #less(k1: number, p1: number, k2: number, p2: number): boolean {
    return k1 < k2 || (k1 === k2 && p1 < p2);
  }

  #copy(from: number, to: number): void {
    this.#key[to] = this.#key[from];
    this.#pos[to] = this.#pos[from];
    this.#right[to] = this.#right[from];
    this.#leftId[to] = this.#leftId[from];
    this.#rightId[to] = this.#rightId[from];
    this.#newId[to] = this.#newId[from];
  }

  #set(i: number, key: number, pos: number, right: number, leftId: number, rightId: number, newId: number) {
    this.#key[i] = key;
    this.#pos[i] = pos;
    this.#right[i] = right;
    this.#leftId[i] = leftId;
    this.#rightId[i] = rightId;
    this.#newId[i] = newId;
  }

  #grow(): void {
    const cap = this.#key.length * 2;
    const grow64 = (a: Float64Array) => {
      const b = new Float64Array(cap);
      b.set(a);
      return b;
    };
    const grow32 = (a: Int32Array) => {
      const b = new Int32Array(cap);
      b.set(a);
      return b;
    };
    this.#key = grow64(this.#key);
    this.#pos = grow32(this.#pos);
    this.#right = grow32(this.#right);
    this.#leftId = grow32(this.#leftId);
    this.#rightId = grow32(this.#rightId);
    this.#newId = grow32(this.#newId);
  }
}

/**
 * Runs BPE merges over a sequence of symbol ids (a doubly linked list over the initial symbols).
 * `candidate(leftId, rightId)` returns `[key, newId]` for a mergeable pair or undefined; smaller keys merge
 * first, ties leftmost. `mergeable[i] === 0` marks an initial symbol that never merges (e.g. byte fallback).
 * Returns the final ids in order.
 */
export function mergeSymbols(
  ids: number[],
  mergeable: Uint8Array | null,
  candidate: (leftId: number, rightId: number) => readonly [number, number] | undefined,
): number[] {
  const n = ids.length;
  if (n < 2) return ids.slice();
  const id = Int32Array.from(ids);
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  const canMerge = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
    canMerge[i] = mergeable ? mergeable[i] : 1;
  }
  const q = new MergeQueue();
  const tryAdd = (l: number, r: number) => {
    if (l < 0 || r < 0 || !canMerge[l] || !canMerge[r]) return;
    const c = candidate(id[l], id[r]);
    if (c) q.push(c[0], l, r, id[l], id[r], c[1]);
  };
  for (let i = 0; i + 1 < n; i++) tryAdd(i, i + 1);
  const top = [0, 0, 0, 0, 0, 0];
  while (q.pop(top)) {
    const l = top[1], r = top[2];
    // Stale: the left symbol was absorbed, its neighbour changed, or either side was merged since.
    if (id[l] !== top[3] || next[l] !== r || id[r] !== top[4]) continue;
    id[l] = top[5];
    id[r] = -1;
    const rn = next[r];
    next[l] = rn;
    if (rn >= 0) prev[rn] = l;
    tryAdd(prev[l], l);
    tryAdd(l, rn);
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i]) out.push(id[i]);
  return out;
}

/** Memoises the ids of short words (a word's merge result does not depend on its neighbours). */
export class WordCache {
  readonly #map = new Map<string, number[]>();

  /** The ids of `word` from the cache, or computed by `encode` and remembered (short words only). */
  get(word: string, encode: () => number[]): number[] {
    if (word.length >= 64) return encode();
    let ids = this.#map.get(word);
    if (ids === undefined) {
      if (this.#map.size >= 50000) this.#map.clear();
      ids = encode();
      this.#map.set(word, ids);
    }
    return ids;
  }
}
