//! A float-float (two-sum) accumulator in f64.

/// `hi + lo` with the rounding error of every addition kept in `lo`
/// (Knuth's two-sum). Accurate to about 1e-30 relative for sums without
/// cancellation, so merging shards in any order agrees far inside 1e-12.
/// A non-finite value propagates as in a plain sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Compensated {
    hi: f64,
    lo: f64,
}

impl Compensated {
    pub(crate) fn add(&mut self, x: f64) {
        let s = self.hi + x;
        if !s.is_finite() {
            self.hi = s;
            return;
        }
        let bb = s - self.hi;
        let e = (self.hi - (s - bb)) + (x - bb);
        self.hi = s;
        self.lo += e;
    }

    pub(crate) fn merge(&mut self, other: &Compensated) {
        self.add(other.hi);
        if self.hi.is_finite() {
            self.add(other.lo);
        }
    }

    pub(crate) fn value(&self) -> f64 {
        if self.hi.is_finite() {
            self.hi + self.lo
        } else {
            self.hi
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_a_plain_sum_loses() {
        let mut c = Compensated::default();
        c.add(1.0);
        for _ in 0..1000 {
            c.add(1e-17);
        }
        assert_eq!(c.value(), 1.0 + 1e-14);
        c.add(f64::INFINITY);
        c.add(1.0);
        assert_eq!(c.value(), f64::INFINITY);
        c.add(f64::NEG_INFINITY);
        assert!(c.value().is_nan());
    }
}
