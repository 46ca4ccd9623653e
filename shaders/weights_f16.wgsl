// Weight accessor: F16 rows (needs the shader-f16 feature). Prepended to matmul.wgsl / embedding.wgsl.
enable f16;

@group(0) @binding(0) var<storage, read> W: array<f16>;

fn w_at(row: u32, k: u32, cols: u32) -> f32 {
  return f32(W[row * cols + k]);
}
