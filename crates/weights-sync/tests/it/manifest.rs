//! The manifest: chunking, checksums, digest, and a destination assembled from verified chunks
//! through the planner.
#![allow(clippy::unwrap_used)]

use sluice_weights_sync::{plan_tensor, DType, Layout, Manifest, Piece, TensorEntry};

fn tensors() -> (Vec<TensorEntry>, Vec<Vec<f32>>) {
    let shapes = [vec![6usize, 8], vec![8], vec![4, 2, 4]];
    let flat2 = vec![Layout::Flat { parts: 2, index: 0 }, Layout::Flat { parts: 2, index: 1 }];
    let entries = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| TensorEntry {
            name: format!("model.layers.0.w{i}"),
            dtype: DType::F32,
            shape: s.clone(),
            layouts: flat2.clone(),
        })
        .collect();
    let values = shapes
        .iter()
        .enumerate()
        .map(|(t, s)| (0..s.iter().product::<usize>()).map(|i| (t * 100 + i) as f32 * 0.37 - 3.0).collect())
        .collect();
    (entries, values)
}

#[test]
fn a_destination_assembled_from_verified_chunks_matches_the_source() {
    let (entries, values) = tensors();
    let dt = DType::Bf16;
    // Each learner rank's local buffer (Flat ranges are contiguous runs of the full tensor).
    let mut locals: Vec<Vec<Vec<u8>>> = Vec::new();
    for (e, v) in entries.iter().zip(&values) {
        let full = dt.encode(v);
        let per = v.len().div_ceil(2);
        locals.push(
            (0..2)
                .map(|h| full[(h * per).min(v.len()) * 2..((h + 1) * per).min(v.len()) * 2].to_vec())
                .collect(),
        );
        assert_eq!(e.layouts.len(), 2);
    }
    let pieces: Vec<Piece<'_>> = locals
        .iter()
        .enumerate()
        .flat_map(|(t, hs)| hs.iter().enumerate().map(move |(h, b)| Piece { tensor: t, holder: h, bytes: b }))
        .collect();
    let m = Manifest::build(sluice_core::PolicyId::new(0, 7), dt, entries.clone(), &pieces, 10).unwrap();
    m.verify().unwrap();
    assert!(m.chunks.iter().all(|c| c.len <= 10));
    assert_eq!(m.total_bytes(), values.iter().map(|v| v.len() as u64 * 2).sum::<u64>());
    // A subscriber holding the first dimension split 2 ways, rank 1.
    let json = serde_json::to_vec(&m).unwrap();
    let got: Manifest = serde_json::from_slice(&json).unwrap();
    got.verify().unwrap();
    for (t, e) in got.tensors.iter().enumerate() {
        let dest = Layout::Split { dim: 0, parts: 2, index: 1 };
        let copies = plan_tensor(&e.name, &e.shape, 2, &e.layouts, dest).unwrap();
        let mut buf = vec![0u8; (dest.local_len(&e.shape) * 2) as usize];
        for c in &copies {
            // Fetch the chunks covering the source range and check each one.
            for chunk in got.chunks_covering(t, c.source, c.src, c.len) {
                let bytes = &locals[t][c.source][chunk.start as usize..(chunk.start + chunk.len) as usize];
                assert!(Manifest::check_chunk(chunk, bytes));
                let lo = c.src.max(chunk.start);
                let hi = (c.src + c.len).min(chunk.start + chunk.len);
                let d = (c.dst + lo - c.src) as usize;
                buf[d..d + (hi - lo) as usize]
                    .copy_from_slice(&bytes[(lo - chunk.start) as usize..(hi - chunk.start) as usize]);
            }
        }
        let half = e.shape[0] / 2 * e.shape[1..].iter().product::<usize>();
        let want: Vec<f32> = dt.decode(&dt.encode(&values[t][half..]));
        assert_eq!(dt.decode(&buf), want, "tensor {}", e.name);
    }
}

#[test]
fn tampering_and_corruption_are_detected() {
    let (entries, values) = tensors();
    let bufs: Vec<Vec<u8>> = values.iter().map(|v| DType::F32.encode(v)).collect();
    let entries: Vec<TensorEntry> =
        entries.into_iter().map(|e| TensorEntry { layouts: vec![Layout::Replicated], ..e }).collect();
    let pieces: Vec<Piece<'_>> =
        bufs.iter().enumerate().map(|(t, b)| Piece { tensor: t, holder: 0, bytes: b }).collect();
    let m =
        Manifest::build(sluice_core::PolicyId::new(0, 1), DType::F32, entries.clone(), &pieces, 64).unwrap();
    let c = m.chunks[1];
    let mut bytes = bufs[c.tensor as usize][c.start as usize..(c.start + c.len) as usize].to_vec();
    assert!(Manifest::check_chunk(&c, &bytes));
    bytes[3] ^= 0x10;
    assert!(!Manifest::check_chunk(&c, &bytes), "a flipped bit fails the checksum");
    assert!(!Manifest::check_chunk(&c, &bytes[1..]), "a short chunk fails");
    let mut forged = m.clone();
    forged.tensors[0].shape = vec![8, 6];
    assert!(forged.verify().unwrap_err().to_string().contains("digest"));
    let short = [Piece { tensor: 0, holder: 0, bytes: &bufs[0][4..] }];
    let err = Manifest::build(sluice_core::PolicyId::new(0, 1), DType::F32, entries, &short, 64)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.0.w0") && err.contains("188 bytes given"), "{err}");
}

#[test]
fn transfer_dtypes_round_trip() {
    let v = [0.0f32, 1.0, -2.5, 3.140625, 1024.0];
    for dt in [DType::F32, DType::Bf16, DType::F16] {
        assert_eq!(dt.decode(&dt.encode(&v)), v, "{dt:?}");
        assert_eq!(dt.encode(&v).len() as u64, v.len() as u64 * dt.size());
    }
}
