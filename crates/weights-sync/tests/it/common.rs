//! Shared by the weight-sync integration tests.

/// Half `index` of a matrix's bytes split along `dim`, by plain loops
/// (bf16 elements), independent of the planner.
pub fn half(bytes: &[u8], shape: &[usize], dim: usize, index: usize) -> Vec<u8> {
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            let keep = if dim == 0 { r / (rows / 2) == index } else { c / (cols / 2) == index };
            if keep {
                out.extend_from_slice(&bytes[(r * cols + c) * 2..(r * cols + c) * 2 + 2]);
            }
        }
    }
    out
}
