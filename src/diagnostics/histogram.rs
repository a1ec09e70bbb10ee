//! Histograms of per-example losses with `numpy.histogram`'s bin semantics,
//! and the running range and moments their automatic edges come from.

use std::fmt::Write as _;

use super::compensated::Compensated;
use crate::error::{Error, Result};

/// How the bins are spaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BinScale {
    /// Equal widths: `numpy.linspace(lo, hi, bins + 1)`.
    #[default]
    Linear,
    /// Equal ratios: `numpy.geomspace(lo, hi, bins + 1)`; needs `lo > 0`.
    /// Losses of 0 fall below the range.
    Log,
}

/// How to choose a histogram's bins.
///
/// With no range set the range is automatic, from the finite losses of the
/// rows that are not ignored (a [`LossRange`] over the whole data, so that the
/// edges do not depend on how the data was chunked):
///
/// - linear: `[min, max]`; when `min == max`, `[min − 0.5, max + 0.5]` (as
///   numpy); with no finite loss, `[0, 1]`;
/// - log: `[min positive, max]`; when they are equal, `[v / 10, v · 10]`;
///   with no positive finite loss, `[1e-6, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSpec {
    /// The number of bins, at least 1.
    pub bins: usize,
    /// Linear or log spacing.
    pub scale: BinScale,
    /// A fixed `(lo, hi)`, or `None` for the automatic range.
    pub range: Option<(f64, f64)>,
}

impl Default for HistogramSpec {
    /// 20 linear bins over the automatic range.
    fn default() -> Self {
        HistogramSpec {
            bins: 20,
            scale: BinScale::Linear,
            range: None,
        }
    }
}

impl HistogramSpec {
    /// `bins` linear bins over the automatic range.
    pub fn new(bins: usize) -> Self {
        HistogramSpec {
            bins,
            ..Self::default()
        }
    }

    /// Sets the spacing.
    pub fn with_scale(mut self, scale: BinScale) -> Self {
        self.scale = scale;
        self
    }

    /// Sets a fixed range.
    pub fn with_range(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some((lo, hi));
        self
    }

    /// Checks the bin count and a fixed range.
    pub fn validate(&self) -> Result<()> {
        if self.bins == 0 {
            return Err(Error::InvalidArgument(
                "histogram bins must be at least 1".into(),
            ));
        }
        if let Some((lo, hi)) = self.range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(Error::InvalidArgument(format!(
                    "histogram range must be finite with lo < hi, got [{lo}, {hi}]"
                )));
            }
            if self.scale == BinScale::Log && lo <= 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "a log-scale histogram range must start above 0, got [{lo}, {hi}]"
                )));
            }
        }
        Ok(())
    }

    /// The `(lo, hi)` the edges span, given the observed losses.
    pub fn resolve_range(&self, observed: &LossRange) -> Result<(f64, f64)> {
        self.validate()?;
        if let Some(range) = self.range {
            return Ok(range);
        }
        Ok(match self.scale {
            BinScale::Linear => match (observed.min(), observed.max()) {
                (Some(lo), Some(hi)) if lo < hi => (lo, hi),
                (Some(lo), Some(hi)) => (lo - 0.5, hi + 0.5),
                _ => (0.0, 1.0),
            },
            BinScale::Log => match (observed.min_positive(), observed.max()) {
                (Some(lo), Some(hi)) if lo < hi => (lo, hi),
                (Some(lo), Some(_)) => (lo / 10.0, lo * 10.0),
                _ => (1e-6, 1.0),
            },
        })
    }

    /// The `bins + 1` edges. Linear edges are numpy's `linspace`
    /// (`lo + i·((hi − lo)/bins)`, the last exactly `hi`); log edges are
    /// `10^(log10 lo + i·(log10 hi − log10 lo)/bins)` with the first and last
    /// exactly `lo` and `hi`.
    pub fn edges(&self, observed: &LossRange) -> Result<Vec<f64>> {
        let (lo, hi) = self.resolve_range(observed)?;
        let n = self.bins;
        let mut edges: Vec<f64> = match self.scale {
            BinScale::Linear => {
                let step = (hi - lo) / n as f64;
                (0..=n).map(|i| lo + i as f64 * step).collect()
            }
            BinScale::Log => {
                let (a, b) = (lo.log10(), hi.log10());
                let step = (b - a) / n as f64;
                (0..=n).map(|i| 10f64.powf(a + i as f64 * step)).collect()
            }
        };
        edges[0] = lo;
        edges[n] = hi;
        // Rounding can only make neighbours equal or swap them by an ulp.
        for i in 1..=n {
            if edges[i] < edges[i - 1] {
                edges[i] = edges[i - 1];
            }
        }
        Ok(edges)
    }
}

/// The range and moments of the finite losses of the rows that are not
/// ignored; mergeable. It gives the automatic histogram range and the
/// `min`, `max`, `num`, `sum` and `sum_squares` of a TensorBoard histogram.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossRange {
    count: u64,
    min: f64,
    max: f64,
    min_positive: f64,
    sum: Compensated,
    sum_squares: Compensated,
}

impl LossRange {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one loss; non-finite values are skipped.
    pub fn add(&mut self, loss: f32) {
        if !loss.is_finite() {
            return;
        }
        let x = loss as f64;
        if self.count == 0 {
            self.min = x;
            self.max = x;
            self.min_positive = f64::INFINITY;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        if x > 0.0 {
            self.min_positive = self.min_positive.min(x);
        }
        self.count += 1;
        self.sum.add(x);
        self.sum_squares.add(x * x);
    }

    /// Adds the losses of the rows that are not ignored (a row is ignored
    /// when `labels` is given and its label is `ignore_index`).
    pub fn add_losses(
        &mut self,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
    ) {
        for (n, &loss) in losses.iter().enumerate() {
            if !is_ignored(labels, ignore_index, n) {
                self.add(loss);
            }
        }
    }

    /// Adds another shard.
    pub fn merge(&mut self, other: &LossRange) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.min_positive = self.min_positive.min(other.min_positive);
        self.count += other.count;
        self.sum.merge(&other.sum);
        self.sum_squares.merge(&other.sum_squares);
    }

    /// How many finite losses were seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest finite loss.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest finite loss.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The smallest positive finite loss.
    pub fn min_positive(&self) -> Option<f64> {
        (self.count > 0 && self.min_positive.is_finite()).then_some(self.min_positive)
    }

    /// The sum of the finite losses.
    pub fn sum(&self) -> f64 {
        self.sum.value()
    }

    /// The sum of their squares.
    pub fn sum_squares(&self) -> f64 {
        self.sum_squares.value()
    }
}

pub(crate) fn is_ignored(labels: Option<&[i32]>, ignore_index: Option<i32>, n: usize) -> bool {
    match (labels, ignore_index) {
        (Some(labels), Some(ignore)) => labels.get(n) == Some(&ignore),
        _ => false,
    }
}

/// The smallest f32 at or above `e`: for an f32 `x`, `x >= e` exactly when
/// `x >= ceil_f32(e)`.
pub(crate) fn ceil_f32(e: f64) -> f32 {
    let f = e as f32;
    if (f as f64) < e {
        f.next_up()
    } else {
        f
    }
}

/// The largest f32 at or below `e`: for an f32 `x`, `x <= e` exactly when
/// `x <= floor_f32(e)`.
pub(crate) fn floor_f32(e: f64) -> f32 {
    let f = e as f32;
    if (f as f64) > e {
        f.next_down()
    } else {
        f
    }
}

/// A histogram of per-example losses with `numpy.histogram`'s semantics:
/// bin `i` holds `e_i ≤ x < e_{i+1}`, the last bin also holds `x = e_N`.
/// Values are compared with the f64 edges exactly.
///
/// Losses that are not counted in a bin are counted apart: ignored rows,
/// non-finite losses, and finite losses below `e_0` or above `e_N` (numpy
/// drops those). Counts are exact integers, so merging shards in any order
/// gives the same histogram; the GPU builds the same counts
/// ([`crate::gpu::GpuDiagnostics::histogram`]).
///
/// ```
/// use fused_loss::diagnostics::Histogram;
///
/// let mut h = Histogram::new(vec![0.0, 1.0, 2.0])?;
/// h.add_losses(&[0.0, 0.5, 1.0, 2.0, 2.5, f32::NAN], None, None);
/// assert_eq!(h.counts(), &[2, 2]);
/// assert_eq!((h.above(), h.nonfinite()), (1, 1));
/// # Ok::<(), fused_loss::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    edges: Vec<f64>,
    counts: Vec<u64>,
    below: u64,
    above: u64,
    nonfinite: u64,
    ignored: u64,
}

impl Histogram {
    /// An empty histogram over `edges`: at least two, finite,
    /// non-decreasing, with the first below the last.
    pub fn new(edges: Vec<f64>) -> Result<Self> {
        let ok = edges.len() >= 2
            && edges.iter().all(|e| e.is_finite())
            && edges.windows(2).all(|w| w[0] <= w[1])
            && edges[0] < edges[edges.len() - 1];
        if !ok {
            return Err(Error::InvalidArgument(
                "histogram edges must be at least two finite, non-decreasing values with first < last"
                    .into(),
            ));
        }
        let bins = edges.len() - 1;
        Ok(Histogram {
            edges,
            counts: vec![0; bins],
            below: 0,
            above: 0,
            nonfinite: 0,
            ignored: 0,
        })
    }

    /// An empty histogram with the edges `spec` gives for `observed`.
    pub fn from_spec(spec: &HistogramSpec, observed: &LossRange) -> Result<Self> {
        Histogram::new(spec.edges(observed)?)
    }

    /// The bin edges, `bins + 1` of them.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// The count of each bin.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Finite losses below the first edge.
    pub fn below(&self) -> u64 {
        self.below
    }

    /// Finite losses above the last edge.
    pub fn above(&self) -> u64 {
        self.above
    }

    /// NaN or infinite losses of rows that are not ignored.
    pub fn nonfinite(&self) -> u64 {
        self.nonfinite
    }

    /// Ignored rows.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The losses counted in the bins.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The bin `x` falls in, or `None` when it is outside the range or not
    /// finite.
    pub fn bin_of(&self, x: f32) -> Option<usize> {
        let v = x as f64;
        let n = self.counts.len();
        if !x.is_finite() || v < self.edges[0] || v > self.edges[n] {
            return None;
        }
        // The number of interior edges at or below v (searchsorted 'right').
        let interior = &self.edges[1..n];
        Some(interior.partition_point(|&e| e <= v))
    }

    /// Adds one loss of a row that is not ignored.
    pub fn add(&mut self, x: f32) {
        match self.bin_of(x) {
            Some(bin) => self.counts[bin] += 1,
            None if !x.is_finite() => self.nonfinite += 1,
            None if (x as f64) < self.edges[0] => self.below += 1,
            None => self.above += 1,
        }
    }

    /// Adds losses; when `labels` and `ignore_index` are given, the rows whose
    /// label is `ignore_index` are counted as ignored instead.
    pub fn add_losses(
        &mut self,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
    ) {
        for (n, &x) in losses.iter().enumerate() {
            if is_ignored(labels, ignore_index, n) {
                self.ignored += 1;
            } else {
                self.add(x);
            }
        }
    }

    /// Adds counts computed elsewhere (the GPU) over the same edges.
    pub(crate) fn add_counts(
        &mut self,
        counts: &[u64],
        below: u64,
        above: u64,
        nonfinite: u64,
        ignored: u64,
    ) {
        for (a, b) in self.counts.iter_mut().zip(counts) {
            *a += b;
        }
        self.below += below;
        self.above += above;
        self.nonfinite += nonfinite;
        self.ignored += ignored;
    }

    /// Adds another shard's counts; the edges must be identical.
    pub fn merge(&mut self, other: &Histogram) -> Result<()> {
        if self.edges != other.edges {
            return Err(Error::InvalidArgument(
                "cannot merge histograms with different edges".into(),
            ));
        }
        self.add_counts(
            &other.counts,
            other.below,
            other.above,
            other.nonfinite,
            other.ignored,
        );
        Ok(())
    }

    /// A text rendering: one line per bin with its interval, its count and a
    /// bar scaled to `width` characters, then a line for what was left out.
    pub fn render(&self, width: usize) -> String {
        let n = self.counts.len();
        let peak = self.counts.iter().copied().max().unwrap_or(0).max(1);
        let labels: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("{:.4}", self.edges[i]),
                    format!("{:.4}", self.edges[i + 1]),
                )
            })
            .collect();
        let lw = labels.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
        let rw = labels.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
        let cw = self
            .counts
            .iter()
            .map(|c| c.to_string().len())
            .max()
            .unwrap_or(1);
        let mut t = String::new();
        for (i, (lo, hi)) in labels.iter().enumerate() {
            let c = self.counts[i];
            let mut bar = (c as u128 * width as u128).div_ceil(peak as u128) as usize;
            if c == 0 {
                bar = 0;
            }
            let close = if i + 1 == n { ']' } else { ')' };
            let _ = writeln!(
                t,
                "  [{lo:>lw$}, {hi:>rw$}{close} {c:>cw$} {}",
                "#".repeat(bar)
            );
        }
        let _ = writeln!(
            t,
            "  left out: {} below, {} above, {} non-finite, {} ignored",
            self.below, self.above, self.nonfinite, self.ignored
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_semantics() {
        let mut h = Histogram::new(vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        h.add_losses(
            &[-1.0, 0.0, 0.999, 1.0, 2.0, 3.0, 3.0001, f32::INFINITY, 7.0],
            Some(&[0, 0, 0, 0, 0, 0, 0, 0, -100]),
            Some(-100),
        );
        assert_eq!(h.counts(), &[2, 1, 2]);
        assert_eq!(
            (h.below(), h.above(), h.nonfinite(), h.ignored()),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn edges_compare_exactly_in_f64() {
        // 0.1 is not an f32; the f32 nearest 0.1 lies above it.
        let h = Histogram::new(vec![0.0, 0.1, 1.0]).unwrap();
        assert_eq!(h.bin_of(0.1f32), Some(1));
        assert_eq!(h.bin_of(0.1f32.next_down()), Some(0));
        assert!(ceil_f32(0.1) == 0.1f32 && floor_f32(0.1) == 0.1f32.next_down());
        assert_eq!(ceil_f32(0.5), 0.5);
        assert_eq!(floor_f32(0.5), 0.5);
    }

    #[test]
    fn automatic_ranges() {
        let mut r = LossRange::new();
        let spec = HistogramSpec::new(4);
        assert_eq!(spec.resolve_range(&r).unwrap(), (0.0, 1.0));
        r.add(2.0);
        assert_eq!(spec.resolve_range(&r).unwrap(), (1.5, 2.5));
        r.add(0.0);
        r.add(f32::NAN);
        r.add(6.0);
        assert_eq!(spec.edges(&r).unwrap(), vec![0.0, 1.5, 3.0, 4.5, 6.0]);
        let log = spec.clone().with_scale(BinScale::Log);
        let e = log.edges(&r).unwrap();
        assert_eq!((e[0], e[4]), (2.0, 6.0));
        assert!(e.windows(2).all(|w| w[0] < w[1]));
        assert!(HistogramSpec::new(0).validate().is_err());
        assert!(log.with_range(0.0, 1.0).validate().is_err());
        assert_eq!(r.count(), 3);
        assert_eq!(r.sum(), 8.0);
        assert_eq!(r.sum_squares(), 40.0);
    }

    #[test]
    fn merge_needs_the_same_edges() {
        let mut a = Histogram::new(vec![0.0, 1.0]).unwrap();
        let b = Histogram::new(vec![0.0, 2.0]).unwrap();
        assert!(a.merge(&b).is_err());
        let mut c = a.clone();
        c.add(0.5);
        a.merge(&c).unwrap();
        assert_eq!(a.counts(), &[1]);
        assert!(a.render(10).contains("[0.0000, 1.0000] 1 ##########"));
    }
}
