//! The k largest losses, streamed and mergeable.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::histogram::is_ignored;
use crate::error::{Error, Result};

/// One of the k largest losses: its row, its loss and what the caller kept
/// with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked<T> {
    /// The row, counted from the start of the data.
    pub row: u64,
    /// Its loss.
    pub loss: f32,
    /// Anything the caller attached (labels, scores).
    pub item: T,
}

impl<T> Ranked<T> {
    /// Larger loss first, then lower row first.
    fn rank(&self, other: &Self) -> Ordering {
        other
            .loss
            .partial_cmp(&self.loss)
            .unwrap_or(Ordering::Equal)
            .then(self.row.cmp(&other.row))
    }
}

/// Heap order: the *least* suspicious entry is the greatest, so it sits on
/// top and is the one dropped.
struct Entry<T>(Ranked<T>);

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.rank(&other.0)
    }
}

/// The `k` largest finite losses with their rows, ordered by loss
/// descending and, on equal losses, by row ascending (`-0.0` equals `0.0`).
/// Non-finite losses are not ranked (count them with
/// [`LossStats::nonfinite_rows`](crate::LossStats::nonfinite_rows)). The
/// result does not depend on the order rows arrive in or on how shards are
/// merged.
///
/// ```
/// use fused_loss::diagnostics::TopK;
///
/// let mut top = TopK::new(2);
/// for (row, &loss) in [0.5f32, 3.0, f32::NAN, 3.0, 1.0].iter().enumerate() {
///     top.push(row as u64, loss, ());
/// }
/// let rows: Vec<u64> = top.into_sorted().iter().map(|r| r.row).collect();
/// assert_eq!(rows, [1, 3]);
/// ```
pub struct TopK<T = ()> {
    k: usize,
    heap: BinaryHeap<Entry<T>>,
}

impl<T: Clone> Clone for TopK<T> {
    fn clone(&self) -> Self {
        TopK {
            k: self.k,
            heap: self.heap.iter().map(|e| Entry(e.0.clone())).collect(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for TopK<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopK")
            .field("k", &self.k)
            .field("len", &self.heap.len())
            .finish()
    }
}

impl<T> TopK<T> {
    /// Keeps the `k` largest.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 16) + 1),
        }
    }

    /// The `k` it keeps.
    pub fn k(&self) -> usize {
        self.k
    }

    /// How many it holds now (at most `k`).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Offers one row; returns whether it is kept (for now).
    pub fn push(&mut self, row: u64, loss: f32, item: T) -> bool {
        if !loss.is_finite() || self.k == 0 {
            return false;
        }
        let entry = Entry(Ranked { row, loss, item });
        if self.heap.len() < self.k {
            self.heap.push(entry);
            return true;
        }
        let Some(mut worst) = self.heap.peek_mut() else {
            return false;
        };
        if entry < *worst {
            *worst = entry;
            true
        } else {
            false
        }
    }

    /// Whether a row with this loss would be kept; lets a caller skip
    /// building the item.
    pub fn would_keep(&self, row: u64, loss: f32) -> bool {
        if !loss.is_finite() || self.k == 0 {
            return false;
        }
        match self.heap.peek() {
            Some(worst) if self.heap.len() >= self.k => {
                let probe = Ranked {
                    row,
                    loss,
                    item: (),
                };
                let worst = Ranked {
                    row: worst.0.row,
                    loss: worst.0.loss,
                    item: (),
                };
                probe.rank(&worst) == Ordering::Less
            }
            _ => true,
        }
    }

    /// Adds another shard's entries.
    pub fn merge(&mut self, other: TopK<T>) {
        for Entry(r) in other.heap {
            self.push(r.row, r.loss, r.item);
        }
    }

    /// The entries, most suspicious first.
    pub fn into_sorted(self) -> Vec<Ranked<T>> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|e| e.0)
            .collect()
    }

    /// A sorted copy of the entries.
    pub fn sorted(&self) -> Vec<Ranked<T>>
    where
        T: Clone,
    {
        self.clone().into_sorted()
    }
}

/// The `k` largest finite losses of the rows that are not ignored, most
/// suspicious first, as [`TopK`] ranks them: the CPU twin of
/// [`crate::gpu::GpuDiagnostics::top_k`]. Rows count from the start of
/// `losses`; a row is ignored when `labels` is given and its label is
/// `ignore_index`. `labels`, when given, must have one label per loss.
///
/// ```
/// use fused_loss::diagnostics::top_k;
///
/// let losses = [0.5f32, 3.0, f32::NAN, 3.0, 1.0];
/// let top = top_k(&losses, Some(&[0, 0, 0, 0, -1]), Some(-1), 3)?;
/// let rows: Vec<u64> = top.iter().map(|r| r.row).collect();
/// assert_eq!(rows, [1, 3, 0]);
/// # Ok::<(), fused_loss::Error>(())
/// ```
pub fn top_k(
    losses: &[f32],
    labels: Option<&[i32]>,
    ignore_index: Option<i32>,
    k: usize,
) -> Result<Vec<Ranked<()>>> {
    if let Some(labels) = labels {
        if labels.len() != losses.len() {
            return Err(Error::ShapeMismatch {
                what: "labels",
                expected: losses.len(),
                actual: labels.len(),
            });
        }
    }
    let mut top = TopK::new(k);
    for (n, &loss) in losses.iter().enumerate() {
        if !is_ignored(labels, ignore_index, n) {
            top.push(n as u64, loss, ());
        }
    }
    Ok(top.into_sorted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_row_and_merging_is_order_free() {
        let losses: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 97) as f32 / 7.0).collect();
        let mut expected: Vec<(u64, f32)> = losses
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u64, l))
            .collect();
        expected.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        expected.truncate(25);
        let mut whole = TopK::new(25);
        for (i, &l) in losses.iter().enumerate() {
            whole.push(i as u64, l, ());
        }
        let mut merged = TopK::new(25);
        for (c, chunk) in losses
            .chunks(64)
            .enumerate()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let mut shard = TopK::new(25);
            for (i, &l) in chunk.iter().enumerate() {
                assert_eq!(shard.would_keep((c * 64 + i) as u64, l), {
                    let mut probe = shard.clone();
                    probe.push((c * 64 + i) as u64, l, ())
                });
                shard.push((c * 64 + i) as u64, l, ());
            }
            merged.merge(shard);
        }
        let got: Vec<(u64, f32)> = whole.sorted().iter().map(|r| (r.row, r.loss)).collect();
        assert_eq!(got, expected);
        let got: Vec<(u64, f32)> = merged
            .into_sorted()
            .iter()
            .map(|r| (r.row, r.loss))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn zero_k_and_negative_zero() {
        let mut top = TopK::new(0);
        assert!(!top.push(0, 1.0, ()));
        let mut top = TopK::new(1);
        top.push(5, 0.0, ());
        top.push(2, -0.0, ());
        assert_eq!(top.into_sorted()[0].row, 2);
    }
}
