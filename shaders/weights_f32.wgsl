// Weight accessor: F32 rows. Prepended to matmul.wgsl / embedding.wgsl.
@group(0) @binding(0) var<storage, read> W: array<f32>;

fn w_at(row: u32, k: u32, cols: u32) -> f32 {
  return W[row * cols + k];
}
