// Weight accessor: Q4_0 rows, repacked at upload into 5 u32 per 32-value block:
// word 0 = f16 scale (low half), words 1..4 = 16 bytes; byte b holds value b (low nibble) and b+16 (high).
@group(0) @binding(0) var<storage, read> W: array<u32>;

fn w_at(row: u32, k: u32, cols: u32) -> f32 {
  let base = (row * (cols / 32u) + k / 32u) * 5u;
  let d = unpack2x16float(W[base]).x;
  let i = k % 32u;
  let b = i % 16u;
  let q = extractBits(W[base + 1u + b / 4u], (b % 4u) * 8u + (i / 16u) * 4u, 4u);
  return d * (f32(q) - 8.0);
}
