//! Element types of the logits: f32, and the half-precision `half::f16` and
//! `half::bf16`.
//!
//! Half-precision logits are read on the GPU as they are stored and widened
//! exactly to f32; everything is accumulated in f32, as for f32 logits. The
//! gradient comes out in f32 or in the logits' own type
//! ([`GradientDtype`]). The CPU reference widens them exactly to f64.
//!
//! **Layout.** A `[B, C]` half array is row-major with element `n·C + c` at
//! byte `2·(n·C + c)`: the memory of a contiguous little-endian half array.
//! On the GPU it is read as u32 words, two elements a word (element 2k in the
//! low half); rows need not start on a word when C is odd. A device buffer
//! holding `B·C` halves must have room for whole words:
//! `⌈B·C/2⌉·4` bytes. Where the gradient is written into such a buffer, the
//! high half of the last word of an odd total is left as it was.

use std::borrow::Cow;
use std::fmt;

use half::{bf16, f16};

use crate::engine::Engine;
use crate::error::Result;
use crate::output::LossOutput;
use crate::spec::{Batch, CrossEntropy};

/// The element type of logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogitDtype {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16 (`half::f16`). On the GPU as `f16` where the device has
    /// `wgpu::Features::SHADER_F16`, else as packed u32 words.
    F16,
    /// bfloat16 (`half::bf16`), the high half of an f32; packed u32 words on
    /// every device.
    Bf16,
}

impl LogitDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            LogitDtype::F32 => 4,
            LogitDtype::F16 | LogitDtype::Bf16 => 2,
        }
    }

    /// Bytes that `elements` values of this type take in a device buffer:
    /// halves are rounded up to whole u32 words.
    pub fn buffer_bytes(self, elements: usize) -> u64 {
        (elements as u64 * self.size() as u64).next_multiple_of(4)
    }

    /// `"float32"`, `"float16"` or `"bfloat16"`.
    pub fn name(self) -> &'static str {
        match self {
            LogitDtype::F32 => "float32",
            LogitDtype::F16 => "float16",
            LogitDtype::Bf16 => "bfloat16",
        }
    }

    /// Values of this type, stored as little-endian bytes (halves packed two
    /// per u32 word), widened to f32 exactly.
    #[cfg(test)]
    pub(crate) fn decode(self, bytes: &[u8], count: usize) -> Vec<f32> {
        let mut out = Vec::new();
        self.decode_into(bytes, count, &mut out);
        out
    }

    /// [`LogitDtype::decode`] into `out` (cleared first; its memory reused).
    pub(crate) fn decode_into(self, bytes: &[u8], count: usize, out: &mut Vec<f32>) {
        out.clear();
        match self {
            LogitDtype::F32 => out.extend(
                bytes[..count * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            LogitDtype::F16 | LogitDtype::Bf16 => {
                out.extend(bytes[..count * 2].chunks_exact(2).map(|b| {
                    let bits = u16::from_le_bytes([b[0], b[1]]);
                    match self {
                        LogitDtype::F16 => f16::from_bits(bits).to_f32(),
                        _ => bf16::from_bits(bits).to_f32(),
                    }
                }))
            }
        }
    }

    /// `x` rounded to this type (to nearest, ties to even) and widened back.
    pub(crate) fn round(self, x: f64) -> f32 {
        match self {
            LogitDtype::F32 => x as f32,
            LogitDtype::F16 => f16::from_f64(x).to_f32(),
            LogitDtype::Bf16 => bf16::from_f64(x).to_f32(),
        }
    }
}

impl fmt::Display for LogitDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type the gradient is written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GradientDtype {
    /// f32, whatever the logits' type.
    #[default]
    F32,
    /// The logits' own type: with half logits, each element is the f32
    /// gradient rounded to nearest (ties to even). In place the gradient
    /// always has the logits' type.
    Input,
}

impl GradientDtype {
    /// The type of the gradient of logits of type `logits`, written into a
    /// separate buffer (`in_place == false`) or over the logits.
    pub fn resolve(self, logits: LogitDtype, in_place: bool) -> LogitDtype {
        match self {
            GradientDtype::F32 if !in_place => LogitDtype::F32,
            _ => logits,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type a [`Batch`] of logits can hold: `f32`, `half::f16` or
/// `half::bf16`.
pub trait LogitElement: sealed::Sealed + Copy + fmt::Debug + Send + Sync + 'static {
    /// The type's tag.
    const DTYPE: LogitDtype;

    /// The value as f32 (exact).
    fn to_f32(self) -> f32;

    /// Little-endian bytes of `values` for a device buffer, halves packed two
    /// per u32 word and padded to a whole word.
    fn to_bytes(values: &[Self]) -> Cow<'_, [u8]>;

    /// `values` widened to f32 (borrowed when they already are).
    fn to_f32_slice(values: &[Self]) -> Cow<'_, [f32]>;
}

impl LogitElement for f32 {
    const DTYPE: LogitDtype = LogitDtype::F32;

    fn to_f32(self) -> f32 {
        self
    }

    fn to_bytes(values: &[f32]) -> Cow<'_, [u8]> {
        Cow::Borrowed(bytemuck::cast_slice(values))
    }

    fn to_f32_slice(values: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(values)
    }
}

fn half_bytes<T: Copy>(values: &[T], bits: impl Fn(T) -> u16) -> Cow<'static, [u8]> {
    let mut bytes = Vec::with_capacity((values.len() * 2).next_multiple_of(4));
    for &v in values {
        bytes.extend_from_slice(&bits(v).to_le_bytes());
    }
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    Cow::Owned(bytes)
}

impl LogitElement for f16 {
    const DTYPE: LogitDtype = LogitDtype::F16;

    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn to_bytes(values: &[f16]) -> Cow<'_, [u8]> {
        half_bytes(values, f16::to_bits)
    }

    fn to_f32_slice(values: &[f16]) -> Cow<'_, [f32]> {
        Cow::Owned(values.iter().map(|v| v.to_f32()).collect())
    }
}

impl LogitElement for bf16 {
    const DTYPE: LogitDtype = LogitDtype::Bf16;

    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }

    fn to_bytes(values: &[bf16]) -> Cow<'_, [u8]> {
        half_bytes(values, bf16::to_bits)
    }

    fn to_f32_slice(values: &[bf16]) -> Cow<'_, [f32]> {
        Cow::Owned(values.iter().map(|v| v.to_f32()).collect())
    }
}

/// A half-precision element type: `half::f16` or `half::bf16`.
pub trait HalfElement: LogitElement {}
impl HalfElement for f16 {}
impl HalfElement for bf16 {}

impl Engine {
    /// [`Engine::compute`] for half-precision logits (the same call; kept
    /// for callers that name the half path).
    ///
    /// ```
    /// use fused_loss::{Batch, CrossEntropy, Engine};
    /// use half::bf16;
    ///
    /// let logits: Vec<bf16> = [2.0f32, 0.5, -1.0].iter().map(|&x| bf16::from_f32(x)).collect();
    /// let out = Engine::cpu()
    ///     .compute_half_blocking(&CrossEntropy::new(), &Batch::with_labels(&logits, 3, &[0]))?;
    /// assert!(out.loss > 0.0);
    /// # Ok::<(), fused_loss::Error>(())
    /// ```
    pub async fn compute_half<T: HalfElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
    ) -> Result<LossOutput> {
        self.compute(spec, batch).await
    }

    /// Blocking [`Engine::compute_half`].
    pub fn compute_half_blocking<T: HalfElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
    ) -> Result<LossOutput> {
        pollster::block_on(self.compute_half(spec, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_pack_little_endian_and_pad_to_a_word() {
        let values = [f16::from_f32(1.0), f16::from_f32(-2.0), f16::from_f32(0.5)];
        let bytes = f16::to_bytes(&values);
        assert_eq!(bytes.len(), 8);
        assert_eq!(&bytes[..2], &0x3c00u16.to_le_bytes());
        assert_eq!(&bytes[6..], &[0, 0]);
        assert_eq!(LogitDtype::F16.decode(&bytes, 3), vec![1.0f32, -2.0, 0.5]);
        let b = [bf16::from_f32(3.0)];
        assert_eq!(
            LogitDtype::Bf16.decode(&bf16::to_bytes(&b), 1),
            vec![3.0f32]
        );
        assert_eq!(LogitDtype::Bf16.buffer_bytes(3), 8);
        assert_eq!(LogitDtype::F32.buffer_bytes(3), 12);
    }

    #[test]
    fn gradient_dtype_in_place_is_the_logits() {
        assert_eq!(
            GradientDtype::F32.resolve(LogitDtype::F16, true),
            LogitDtype::F16
        );
        assert_eq!(
            GradientDtype::F32.resolve(LogitDtype::Bf16, false),
            LogitDtype::F32
        );
        assert_eq!(
            GradientDtype::Input.resolve(LogitDtype::Bf16, false),
            LogitDtype::Bf16
        );
    }
}
