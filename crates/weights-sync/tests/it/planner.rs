//! Property tests of the reshard planner: random shapes, element sizes and layouts on both sides;
//! assembling through the plan reproduces the bytes an independent element-by-element cut gives.
#![allow(clippy::unwrap_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_weights_sync::{apply, plan_fused, plan_tensor, Fused, Layout, SyncError};

/// Row-major coordinates of flat element `i`.
fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        c[d] = i % shape[d];
        i /= shape[d];
    }
    c
}

/// Whether a holder with `layout` keeps element `i`: written from the layouts' definitions, not
/// from `Layout::ranges`.
fn keeps(layout: Layout, i: usize, shape: &[usize]) -> bool {
    let numel: usize = shape.iter().product();
    match layout {
        Layout::Replicated => true,
        Layout::Flat { parts, index } => {
            let per = numel.div_ceil(parts);
            i >= per * index && i < per * (index + 1)
        }
        Layout::Split { dim, parts, index } => {
            let slice = shape[dim] / parts;
            let c = coords(i, shape)[dim];
            c >= slice * index && c < slice * (index + 1)
        }
    }
}

/// The local buffer of a holder: the bytes of the elements it keeps, in row-major order.
fn cut(full: &[u8], elem: usize, layout: Layout, shape: &[usize]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    (0..numel)
        .filter(|&i| keeps(layout, i, shape))
        .flat_map(|i| full[i * elem..(i + 1) * elem].to_vec())
        .collect()
}

fn random_layout(rng: &mut StdRng, shape: &[usize]) -> Layout {
    match rng.random_range(0..3) {
        0 => Layout::Replicated,
        1 => {
            let dim = rng.random_range(0..shape.len());
            let divisors: Vec<usize> = (1..=shape[dim]).filter(|&p| shape[dim].is_multiple_of(p)).collect();
            let parts = divisors[rng.random_range(0..divisors.len())];
            Layout::Split { dim, parts, index: rng.random_range(0..parts) }
        }
        _ => {
            let parts = rng.random_range(1..=6);
            Layout::Flat { parts, index: rng.random_range(0..parts) }
        }
    }
}

#[test]
fn any_source_layout_to_any_destination_layout_reproduces_the_bytes() {
    let mut rng = StdRng::seed_from_u64(4);
    for case in 0..2000 {
        let ndim = rng.random_range(1..=4);
        let shape: Vec<usize> = (0..ndim).map(|_| rng.random_range(1..=6)).collect();
        let elem = [1usize, 2, 4][rng.random_range(0..3)];
        let numel: usize = shape.iter().product();
        let full: Vec<u8> = (0..numel * elem).map(|_| rng.random()).collect();
        // Sources: every holder of one or two random layouts (overlapping coverage included).
        let mut sources = Vec::new();
        for _ in 0..rng.random_range(1..=2) {
            let l = random_layout(&mut rng, &shape);
            sources.extend((0..l.parts()).map(|i| l.with_index(i)));
        }
        let dest = random_layout(&mut rng, &shape);
        let copies = plan_tensor("t", &shape, elem as u64, &sources, dest).unwrap();
        let bufs: Vec<Vec<u8>> = sources.iter().map(|&l| cut(&full, elem, l, &shape)).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
        let want = cut(&full, elem, dest, &shape);
        let mut got = vec![0u8; want.len()];
        apply(&copies, &refs, &mut got);
        assert_eq!(got, want, "case {case}: shape {shape:?} elem {elem} sources {sources:?} dest {dest:?}");
        // Every destination byte is written exactly once.
        assert_eq!(copies.iter().map(|c| c.len).sum::<u64>(), want.len() as u64);
    }
}

#[test]
fn fused_qkv_split_two_ways_holds_each_parts_slice_in_turn() {
    let (q, k, v) = (vec![8usize, 4], vec![4usize, 4], vec![4usize, 4]);
    let elem = 2u64;
    let bytes = |shape: &[usize], seed: u8| -> Vec<u8> {
        (0..shape.iter().product::<usize>() * 2)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    };
    let full = [bytes(&q, 1), bytes(&k, 2), bytes(&v, 3)];
    // Learner side: q and v FSDP-flat over 3 ranks, k replicated.
    let flat3: Vec<Layout> = (0..3).map(|i| Layout::Flat { parts: 3, index: i }).collect();
    let parts =
        vec![(q.clone(), flat3.clone()), (k.clone(), vec![Layout::Replicated]), (v.clone(), flat3.clone())];
    let fused = Fused { name: "qkv_proj.weight".into(), parts: vec!["q".into(), "k".into(), "v".into()] };
    for index in 0..2 {
        let dest = Layout::Split { dim: 0, parts: 2, index };
        let (plans, len) = plan_fused(&fused, &parts, elem, dest).unwrap();
        let mut got = vec![0u8; len as usize];
        for ((plan, (shape, sources)), full) in plans.iter().zip(&parts).zip(&full) {
            let bufs: Vec<Vec<u8>> = sources.iter().map(|&l| cut(full, 2, l, shape)).collect();
            let refs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
            apply(&plan.copies, &refs, &mut got);
        }
        let want: Vec<u8> = [(&q, &full[0]), (&k, &full[1]), (&v, &full[2])]
            .iter()
            .flat_map(|(shape, f)| cut(f, 2, dest, shape))
            .collect();
        assert_eq!(got, want, "rank {index}");
    }
    let err = plan_fused(&fused, &parts, elem, Layout::Split { dim: 1, parts: 2, index: 0 }).unwrap_err();
    assert!(err.to_string().contains("only be split along dim 0"), "{err}");
}

#[test]
fn missing_coverage_and_bad_layouts_are_errors_naming_the_tensor() {
    let shape = [6usize, 4];
    let err =
        plan_tensor("w", &shape, 4, &[Layout::Flat { parts: 3, index: 0 }], Layout::Replicated).unwrap_err();
    assert!(matches!(err, SyncError::Uncovered { start: 8, .. }), "{err}");
    assert!(err.to_string().contains("`w`"));
    let err =
        plan_tensor("w", &shape, 4, &[Layout::Replicated], Layout::Split { dim: 1, parts: 3, index: 0 })
            .unwrap_err()
            .to_string();
    assert!(err.contains("does not split into 3 equal parts"), "{err}");
    let err =
        plan_tensor("w", &shape, 4, &[Layout::Replicated], Layout::Split { dim: 2, parts: 1, index: 0 })
            .unwrap_err()
            .to_string();
    assert!(err.contains("split dim 2"), "{err}");
}
