//! How a batch is laid out for one forward call: positions, rotary tables, attention mask.
//!
//! Two layouts share one [`ForwardCtx`]:
//! - the sampler's: one sequence per row, left-padded (`[left padding | prompt | new tokens]`),
//!   with a key-padding mask ([`forward_ctx`]), so decoding appends one column to every row;
//! - the scorer's: whole sequences packed into rows ([`pack`]), each with
//!   its own positions and a block-diagonal causal mask ([`packed_ctx`]), so a ragged batch
//!   computes its real tokens and almost no padding; sequences with the same prompt (a GRPO
//!   group's) share one copy of it, so the prompt is computed once rather than once per sample.
//!
//! In both, a query sees a key iff the key belongs to its sequence (for a completion, its prompt
//! too) and is not after it; every query also sees itself, so a padding column never takes a
//! softmax over nothing. Masked keys contribute exactly zero, so a sequence computes what it
//! would compute alone.

use burn::prelude::*;

use crate::config::ModelConfig;
use crate::llama::ForwardCtx;

/// Builds the [`ForwardCtx`] for `seq` new columns per row after `past` cached columns.
///
/// `positions` holds `batch * seq` rotary positions; `key_valid` holds `batch * (past + seq)` flags
/// saying which key columns are real tokens.
pub fn forward_ctx<B: Backend>(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    past: usize,
    positions: &[usize],
    key_valid: &[bool],
    device: &B::Device,
) -> ForwardCtx<B> {
    let total = past + seq;
    debug_assert_eq!(key_valid.len(), batch * total);
    ctx(cfg, batch, seq, total, positions, device, |b, i, j| {
        let q = past + i;
        j != q && (j > q || !key_valid[b * total + j])
    })
}

/// What one column of a packed row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Nothing: it sees only itself.
    Pad,
    /// A token of the prompt that unit `unit` holds once for all of its completions.
    Prompt {
        /// The unit.
        unit: u32,
    },
    /// A token of sequence `seq`'s completion, after its prompt in unit `unit`.
    Completion {
        /// The unit.
        unit: u32,
        /// The sequence (index in the input).
        seq: u32,
    },
}

impl Cell {
    /// Whether a query in this cell may attend to a key in `key`, an earlier column of the same
    /// row: a prompt sees its unit's prompt; a completion sees its unit's prompt and itself.
    fn sees(self, key: Cell) -> bool {
        match (self, key) {
            (Cell::Prompt { unit: u } | Cell::Completion { unit: u, .. }, Cell::Prompt { unit: v }) => u == v,
            (Cell::Completion { unit: u, seq: s }, Cell::Completion { unit: v, seq: t }) => u == v && s == t,
            _ => false,
        }
    }
}

/// Where one sequence lies in a [`Packing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The packed row.
    pub row: usize,
    /// Column of its prompt's first token (shared with the other sequences of its unit).
    pub prompt: usize,
    /// Column of its completion's first token.
    pub completion: usize,
}

/// Sequences packed into rows, those with the same prompt sharing one copy of it.
///
/// A *unit* is a prompt followed by completions of sequences that share it, as many as fit in a
/// row; units are packed into rows (see [`pack`] for the width). Each completion's positions
/// continue from its prompt's, and it attends to the prompt and to itself only, so it computes
/// what its sequence alone computes, while the prompt's tokens are computed once per unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// The row width: at least the longest sequence.
    pub width: usize,
    /// Rows used.
    pub rows: usize,
    /// Each sequence's place, in input order.
    pub slots: Vec<Slot>,
    /// Each column's content, `rows * width`, row-major.
    pub cells: Vec<Cell>,
}

impl Packing {
    /// Positions a forward over the packed rows computes (`rows * width`).
    pub fn positions(&self) -> usize {
        self.rows * self.width
    }
}

/// Multiply-add equivalents of the elementwise passes over one attention score (scale, mask,
/// softmax's max, exp, sum and divide, and their backward), next to its `2 * head_dim` products.
/// Measured, not counted: on the CPU these passes are unfused, single-threaded and allocating
/// under autodiff, while the projections run at the GEMM's peak. A forward + backward of 16
/// SmolLM2-135M sequences (two 110-token prompts, completions of 10-160 tokens) took 43-55 s in
/// rows four times the longest (2040 positions) and 31-40 s in rows of the longest (2805), three
/// runs each; solving `positions * (1 + key_cost * width)` for the two gives a key column about
/// 3.6 times the cost that 16 here implied, so 384. The tiny model's GRPO batch (below) still
/// packs into rows of twice the longest.
const SCORE_OPS: usize = 384;

/// A key column's attention cost for one query, relative to that query's projections (q/k/v/o and
/// the MLP): what widening a packed row by one column adds to each of its positions.
pub fn key_cost(cfg: &ModelConfig) -> f64 {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let projections = 2 * h * q + 2 * h * kv + 3 * h * cfg.intermediate_size;
    (cfg.num_heads * (2 * hd + SCORE_OPS)) as f64 / projections.max(1) as f64
}

/// Packs sequences (`prompts[i]` then `completion_lens[i]` tokens) into rows, those with equal
/// prompts sharing a copy of it. The width is 1 to 4 times the longest sequence: wider rows let
/// more completions share a prompt but widen every query's attention, so the width with the
/// least [`pack_cost`] wins (the narrowest on a tie).
/// On the GRPO benchmark (tiny Llama, 6-token prompts, completions of 1-32 tokens) this picks
/// rows of twice the longest sequence (1140 positions against 1256, measured while a completion's
/// last token was still an input); in three interleaved runs each, the asynchronous run was
/// faster with them in every beta-0 run and two of three at beta 0.04, while a forward alone
/// measured a few percent slower (its attention is single-threaded).
pub fn pack(prompts: &[&[u32]], completion_lens: &[usize], key_cost: f64) -> Packing {
    best_layout(prompts, completion_lens, key_cost).cells(prompts, completion_lens)
}

/// What a forward over [`pack`]'s rows costs, in positions of projections (each position also
/// pays `key_cost` per key column of its row), without laying the cells out.
pub fn pack_cost(prompts: &[&[u32]], completion_lens: &[usize], key_cost: f64) -> f64 {
    best_layout(prompts, completion_lens, key_cost).cost(key_cost)
}

fn best_layout(prompts: &[&[u32]], completion_lens: &[usize], key_cost: f64) -> Layout {
    assert_eq!(prompts.len(), completion_lens.len(), "one completion length per prompt");
    let longest = prompts.iter().zip(completion_lens).map(|(p, c)| p.len() + c).max().unwrap_or(0).max(1);
    let groups = groups(prompts, completion_lens);
    let mut best = layout(prompts, &groups, completion_lens, longest);
    for k in 2..=4 {
        let wider = layout(prompts, &groups, completion_lens, k * longest);
        if wider.cost(key_cost) < best.cost(key_cost) {
            best = wider;
        }
    }
    best
}

/// Equal prompts, found by content: for each prompt the index of its class, classes numbered in
/// order of first appearance, and each class's first member. The sampler prefills one prompt per
/// class; the scorer's packing shares one copy per unit.
pub(crate) fn equal_prompts(prompts: &[&[u32]]) -> (Vec<usize>, Vec<usize>) {
    let mut first = Vec::new();
    let mut class_of = std::collections::HashMap::<&[u32], usize>::new();
    let class = prompts
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            *class_of.entry(p).or_insert_with(|| {
                first.push(i);
                first.len() - 1
            })
        })
        .collect();
    (class, first)
}

/// The members of each class of [`equal_prompts`], longest completion first (ties in input
/// order): the order [`layout`] takes them in at every width.
fn groups(prompts: &[&[u32]], completion_lens: &[usize]) -> Vec<Vec<usize>> {
    let (class, first) = equal_prompts(prompts);
    let mut groups = vec![Vec::new(); first.len()];
    for (i, c) in class.into_iter().enumerate() {
        groups[c].push(i);
    }
    for members in &mut groups {
        members.sort_by_key(|&i| std::cmp::Reverse(completion_lens[i]));
    }
    groups
}

/// Where [`pack`] puts each unit in rows of one width, before the cells are laid out.
struct Layout {
    width: usize,
    rows: usize,
    /// Each unit's length and sequences (a prompt and the completions that fit after it).
    units: Vec<(usize, Vec<usize>)>,
    /// Each unit's row and column.
    placed: Vec<(usize, usize)>,
}

/// [`pack`] into rows of `width` (at least the longest sequence), `groups` the sequences with
/// equal prompts, longest first ([`groups`]). Each group's completions go, in that order, into
/// the first unit with room (a unit holds the prompt once and at most a row); units go, longest
/// first, into the first row with room (first-fit decreasing both times; ties in input order, so
/// the layout is a function of the input).
fn layout(prompts: &[&[u32]], groups: &[Vec<usize>], completion_lens: &[usize], width: usize) -> Layout {
    let mut units: Vec<(usize, Vec<usize>)> = Vec::new();
    for members in groups {
        let p = prompts[members[0]].len();
        let first = units.len();
        for &i in members {
            let c = completion_lens[i];
            match units[first..].iter_mut().find(|(len, _)| len + c <= width) {
                Some((len, seqs)) => {
                    *len += c;
                    seqs.push(i);
                }
                None => units.push((p + c, vec![i])),
            }
        }
    }
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|&u| std::cmp::Reverse(units[u].0));
    let mut used: Vec<usize> = Vec::new();
    let mut placed = vec![(0, 0); units.len()];
    for u in order {
        let len = units[u].0;
        let row = match used.iter().position(|&w| w + len <= width) {
            Some(r) => r,
            None => {
                used.push(0);
                used.len() - 1
            }
        };
        placed[u] = (row, used[row]);
        used[row] += len;
    }
    Layout { width, rows: used.len(), units, placed }
}

impl Layout {
    fn cost(&self, key_cost: f64) -> f64 {
        (self.rows * self.width) as f64 * (1.0 + key_cost * self.width as f64)
    }

    /// The cells and slots of this layout.
    fn cells(self, prompts: &[&[u32]], completion_lens: &[usize]) -> Packing {
        let Layout { width, rows, units, placed } = self;
        let mut cells = vec![Cell::Pad; rows * width];
        let mut slots = vec![Slot { row: 0, prompt: 0, completion: 0 }; prompts.len()];
        for (u, ((_, seqs), &(row, offset))) in units.iter().zip(&placed).enumerate() {
            let unit = u as u32;
            let p = prompts[seqs[0]].len();
            let at = row * width + offset;
            cells[at..at + p].fill(Cell::Prompt { unit });
            let mut next = offset + p;
            for &i in seqs {
                let c = completion_lens[i];
                cells[row * width + next..row * width + next + c]
                    .fill(Cell::Completion { unit, seq: i as u32 });
                slots[i] = Slot { row, prompt: offset, completion: next };
                next += c;
            }
        }
        Packing { width, rows, slots, cells }
    }
}

/// Builds the [`ForwardCtx`] of a packed batch without a cache: `cells` says what each of the
/// `batch * seq` columns holds, and `positions` its rotary position within its sequence.
pub fn packed_ctx<B: Backend>(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    positions: &[usize],
    cells: &[Cell],
    device: &B::Device,
) -> ForwardCtx<B> {
    debug_assert_eq!(cells.len(), batch * seq);
    ctx(cfg, batch, seq, seq, positions, device, |b, i, j| {
        let c = &cells[b * seq..(b + 1) * seq];
        j != i && (j > i || !c[i].sees(c[j]))
    })
}

/// The rotary tables of `positions` and the mask `masked(row, query, key)` over `total` keys, in
/// the layout attention consumes.
fn ctx<B: Backend>(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    total: usize,
    positions: &[usize],
    device: &B::Device,
    masked: impl Fn(usize, usize, usize) -> bool,
) -> ForwardCtx<B> {
    debug_assert_eq!(positions.len(), batch * seq);
    let (cos, sin) = rope_tables(cfg, positions);
    let hd = cfg.head_dim;
    let cos = Tensor::<B, 4>::from_data(TensorData::new(cos, [batch, seq, 1, hd]), device);
    let sin = Tensor::<B, 4>::from_data(TensorData::new(sin, [batch, seq, 1, hd]), device);
    // Built once per forward in the layout attention consumes, so no layer reshapes or copies it.
    let (kv, rep) = (cfg.num_kv_heads, cfg.num_heads / cfg.num_kv_heads);
    let mut mask = Vec::with_capacity(batch * kv * rep * seq * total);
    let mut tile = Vec::with_capacity(seq * total);
    for b in 0..batch {
        tile.clear();
        for i in 0..seq {
            tile.extend((0..total).map(|j| masked(b, i, j)));
        }
        for _ in 0..kv * rep {
            mask.extend_from_slice(&tile);
        }
    }
    let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [batch, kv, rep * seq, total]), device);
    ForwardCtx { cos, sin, mask }
}

/// HF rotary tables: `inv_freq[i] = theta^(-2i/d)` in f32 as transformers computes it, then
/// `cos(pos * inv_freq)` over both halves of the head and `sin` with its first half negated.
fn rope_tables(cfg: &ModelConfig, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let hd = cfg.head_dim;
    let half = hd / 2;
    let inv_freq: Vec<f32> =
        (0..half).map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32)).collect();
    let mut cos = Vec::with_capacity(positions.len() * hd);
    let mut sin = Vec::with_capacity(positions.len() * hd);
    for &p in positions {
        for sign in [-1.0f32, 1.0] {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(sign * angle.sin());
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs sequences with distinct prompts (one token each, so none shares).
    fn pack_lens(lens: &[usize]) -> Packing {
        let prompts: Vec<Vec<u32>> = (0..lens.len() as u32).map(|i| vec![i]).collect();
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let width = lens.iter().copied().max().unwrap();
        let lens: Vec<usize> = lens.iter().map(|l| l - 1).collect();
        layout(&refs, &groups(&refs, &lens), &lens, width).cells(&refs, &lens)
    }

    #[test]
    fn pack_puts_the_longest_first_and_each_into_the_first_row_with_room() {
        let p = pack_lens(&[5, 3, 2, 5, 1]);
        assert_eq!(p.width, 5);
        // Rows: [5], [5], [3, 2], [1].
        let starts: Vec<(usize, usize)> = p.slots.iter().map(|s| (s.row, s.prompt)).collect();
        assert_eq!(starts, vec![(0, 0), (2, 0), (2, 3), (1, 0), (3, 0)]);
        assert_eq!((p.rows, p.positions()), (4, 20));
        // No two sequences overlap and each fits in its row.
        let lens = [7, 1, 4, 3, 3, 6, 2, 2, 5];
        let p = pack_lens(&lens);
        let filled = p.cells.iter().filter(|c| **c != Cell::Pad).count();
        assert_eq!(filled, lens.iter().sum::<usize>(), "every token has a column of its own");
        for (s, &len) in p.slots.iter().zip(&lens) {
            assert!(s.prompt + len <= p.width);
        }
        assert_eq!(p.rows, 5, "33 tokens in rows of 7");
    }

    #[test]
    fn sequences_with_one_prompt_share_it_as_far_as_a_row_holds() {
        // Prompt [1, 2] with completions of 5, 3, 2 and 1 tokens, prompt [9] with one of 2: rows
        // of 7 (the longest sequence) hold [1, 2 | 5], [1, 2 | 3, 2] and [1, 2 | 1 ; 9 | 2].
        let (a, b): (&[u32], &[u32]) = (&[1, 2], &[9]);
        let prompts = [a, a, b, a, a];
        let lens = [3, 5, 2, 2, 1];
        let p = layout(&prompts, &groups(&prompts, &lens), &lens, 7).cells(&prompts, &lens);
        assert_eq!((p.width, p.rows), (7, 3));
        let cell = |row: usize, col: usize| p.cells[row * p.width + col];
        assert_eq!(p.slots[1], Slot { row: 0, prompt: 0, completion: 2 });
        assert_eq!(p.slots[0], Slot { row: 1, prompt: 0, completion: 2 });
        assert_eq!(p.slots[3], Slot { row: 1, prompt: 0, completion: 5 });
        assert_eq!(p.slots[4].completion, p.slots[4].prompt + 2);
        assert_eq!(p.slots[2].completion, p.slots[2].prompt + 1);
        assert_eq!(p.slots[2].row, p.slots[4].row);
        // The second completion in a unit sees the prompt, not the first completion.
        let (u, s3) = (cell(1, 0), cell(1, 5));
        assert!(matches!(u, Cell::Prompt { .. }));
        assert!(s3.sees(u) && s3.sees(cell(1, 1)));
        assert!(!s3.sees(cell(1, 2)), "a completion must not see its unit-mate");
        assert!(cell(1, 3).sees(cell(1, 2)));
        assert_ne!(cell(0, 0), cell(1, 0), "each unit holds its own copy of the prompt");
    }

    #[test]
    fn rows_widen_while_sharing_saves_more_than_attention_costs() {
        // One 30-token prompt with eight 10-token completions (sequences of 40): rows of 40 hold
        // one completion each (8 x 40 positions), rows of 80 five and three (2 x 80), a row of 120
        // all eight (110 of 120).
        let prompt: &[u32] = &[7; 30];
        let lens = [10; 8];
        let free = pack(&[prompt; 8], &lens, 0.0);
        assert_eq!((free.width, free.rows), (120, 1));
        // At 0.1 a position costs 1 + 0.1 x width: 320 x 5 = 1600, 160 x 9 = 1440, 120 x 13 = 1560.
        let dear = pack(&[prompt; 8], &lens, 0.1);
        assert_eq!((dear.width, dear.rows), (80, 2));
        // Distinct prompts share nothing: wider rows compute no fewer positions, so the narrowest.
        let prompts: Vec<Vec<u32>> = (0..8).map(|i| vec![i; 30]).collect();
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let apart = pack(&refs, &lens, 0.0);
        assert_eq!((apart.width, apart.rows), (40, 8));
    }
}
