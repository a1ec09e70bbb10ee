//! TensorBoard event files: `events.out.tfevents.*`, as
//! `tf.compat.v1.summary.FileWriter` writes them.
//!
//! Each file is a TFRecord stream: every record is
//! `u64 length (LE) · u32 masked CRC-32C of the length · data · u32 masked
//! CRC-32C of the data`, where the mask is
//! `((crc >> 15) | (crc << 17)) + 0xa282ead8`. The data is one `Event`
//! protobuf (prost, with the message definitions of TensorFlow's
//! `event.proto` and `summary.proto` written out in [`proto`]). The first
//! event holds `file_version = "brain.Event:2"`; scalars are
//! `Summary.Value.simple_value` and histograms `Summary.Value.histo`, the
//! forms TensorBoard reads from TF1 summaries.
//!
//! ```
//! use fused_loss::diagnostics::{Histogram, LossRange};
//! use fused_loss::tensorboard::{read_events, EventWriter};
//!
//! let dir = std::env::temp_dir().join(format!("fused-loss-doc-tb-{}", std::process::id()));
//! let mut writer = EventWriter::create(&dir)?;
//! writer.add_scalar("average_loss", 0.25, 7)?;
//! let path = writer.finish()?;
//! let events = read_events(&path)?;
//! assert_eq!(events[0].file_version(), Some("brain.Event:2"));
//! assert_eq!(events[1].step, 7);
//! assert_eq!(events[1].scalar("average_loss"), Some(0.25));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), fused_loss::Error>(())
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;

use crate::diagnostics::{Histogram, LossRange};
use crate::error::{Error, Result};

pub use proto::{Event, HistogramProto, Summary};

/// The protobuf messages, written out by hand from TensorFlow's
/// `tensorflow/core/util/event.proto` and
/// `tensorflow/core/framework/summary.proto` (only the fields written here;
/// the tags are TensorFlow's).
pub mod proto {
    /// `tensorflow.Event`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        /// Seconds since the epoch.
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        /// The global step.
        #[prost(int64, tag = "2")]
        pub step: i64,
        /// What the event carries.
        #[prost(oneof = "event::What", tags = "3, 5")]
        pub what: Option<event::What>,
    }

    /// Nested types of [`Event`].
    pub mod event {
        /// `Event.what`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum What {
            /// `"brain.Event:2"` in the first event of a file.
            #[prost(string, tag = "3")]
            FileVersion(String),
            /// Summary values.
            #[prost(message, tag = "5")]
            Summary(super::Summary),
        }
    }

    /// `tensorflow.Summary`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        /// The values.
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<summary::Value>,
    }

    /// Nested types of [`Summary`].
    pub mod summary {
        /// `Summary.Value`.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Value {
            /// The tag, e.g. `average_loss`.
            #[prost(string, tag = "1")]
            pub tag: String,
            /// The value.
            #[prost(oneof = "value::Value", tags = "2, 5")]
            pub value: Option<value::Value>,
        }

        /// Nested types of [`Value`].
        pub mod value {
            /// `Summary.Value.value`.
            #[derive(Clone, PartialEq, prost::Oneof)]
            pub enum Value {
                /// A scalar.
                #[prost(float, tag = "2")]
                SimpleValue(f32),
                /// A histogram.
                #[prost(message, tag = "5")]
                Histo(super::super::HistogramProto),
            }
        }
    }

    /// `tensorflow.HistogramProto`: bucket `i` covers
    /// `[bucket_limit[i − 1], bucket_limit[i])`, the first from `min` and the
    /// last up to `max`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistogramProto {
        /// The smallest value.
        #[prost(double, tag = "1")]
        pub min: f64,
        /// The largest value.
        #[prost(double, tag = "2")]
        pub max: f64,
        /// How many values.
        #[prost(double, tag = "3")]
        pub num: f64,
        /// Their sum.
        #[prost(double, tag = "4")]
        pub sum: f64,
        /// The sum of their squares.
        #[prost(double, tag = "5")]
        pub sum_squares: f64,
        /// Each bucket's right edge.
        #[prost(double, repeated, tag = "6")]
        pub bucket_limit: Vec<f64>,
        /// Each bucket's count.
        #[prost(double, repeated, tag = "7")]
        pub bucket: Vec<f64>,
    }
}

impl Event {
    /// The file version, when this is a file's first event.
    pub fn file_version(&self) -> Option<&str> {
        match &self.what {
            Some(proto::event::What::FileVersion(v)) => Some(v),
            _ => None,
        }
    }

    fn values(&self) -> impl Iterator<Item = &proto::summary::Value> {
        let summary = match &self.what {
            Some(proto::event::What::Summary(s)) => Some(s),
            _ => None,
        };
        summary.into_iter().flat_map(|s| s.value.iter())
    }

    /// The scalar (`simple_value`) with this tag.
    pub fn scalar(&self, tag: &str) -> Option<f32> {
        self.values()
            .find(|v| v.tag == tag)
            .and_then(|v| match v.value {
                Some(proto::summary::value::Value::SimpleValue(x)) => Some(x),
                _ => None,
            })
    }

    /// The histogram with this tag.
    pub fn histogram(&self, tag: &str) -> Option<&HistogramProto> {
        self.values()
            .find(|v| v.tag == tag)
            .and_then(|v| match &v.value {
                Some(proto::summary::value::Value::Histo(h)) => Some(h),
                _ => None,
            })
    }
}

/// The file version TensorBoard expects in a file's first event.
pub const FILE_VERSION: &str = "brain.Event:2";

/// TFRecord's masked CRC-32C.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Frames one record.
pub fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Splits a TFRecord stream into its records, checking both CRCs of each.
pub fn decode_records(mut bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let bad = |message: String| Error::InvalidArgument(format!("bad tfrecord: {message}"));
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let n = records.len();
        if bytes.len() < 12 {
            return Err(bad(format!("record {n}: truncated header")));
        }
        let (len_bytes, rest) = bytes.split_at(8);
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let len_crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if len_crc != masked_crc32c(len_bytes) {
            return Err(bad(format!("record {n}: length crc mismatch")));
        }
        let rest = &rest[4..];
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l.checked_add(4).is_some_and(|t| t <= rest.len()))
            .ok_or_else(|| bad(format!("record {n}: truncated data")))?;
        let (data, rest) = rest.split_at(len);
        let data_crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if data_crc != masked_crc32c(data) {
            return Err(bad(format!("record {n}: data crc mismatch")));
        }
        records.push(data);
        bytes = &rest[4..];
    }
    Ok(records)
}

/// Reads an event file back, checking the framing and the CRCs.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_records(&bytes)?
        .into_iter()
        .enumerate()
        .map(|(n, data)| {
            Event::decode(data).map_err(|e| {
                Error::InvalidArgument(format!("bad event {n} in {}: {e}", path.display()))
            })
        })
        .collect()
}

/// A histogram as TensorBoard reads it, following TensorFlow's own layout:
/// a first bucket up to `e_0` with the losses below the range, one bucket per
/// bin (limit `e_{i+1}`), and a last bucket up to `f64::MAX` with the losses
/// above it. `min`, `max`, `num`, `sum` and `sum_squares` describe all the
/// finite losses of the rows not ignored (`range`, collected over the same
/// data), so `num` is the sum of the buckets.
pub fn histogram_proto(histogram: &Histogram, range: &LossRange) -> HistogramProto {
    let edges = histogram.edges();
    let mut bucket_limit = Vec::with_capacity(edges.len() + 1);
    bucket_limit.extend_from_slice(edges);
    bucket_limit.push(f64::MAX);
    let mut bucket = Vec::with_capacity(edges.len() + 1);
    bucket.push(histogram.below() as f64);
    bucket.extend(histogram.counts().iter().map(|&c| c as f64));
    bucket.push(histogram.above() as f64);
    HistogramProto {
        min: range.min().unwrap_or(0.0),
        max: range.max().unwrap_or(0.0),
        num: range.count() as f64,
        sum: range.sum(),
        sum_squares: range.sum_squares(),
        bucket_limit,
        bucket,
    }
}

fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes one `events.out.tfevents.*` file into a log directory.
///
/// The file is named `events.out.tfevents.<seconds>.<host>.<pid>.<n>`, so
/// that writers in one process or in several never collide. Call
/// [`EventWriter::finish`] to flush it (dropping the writer flushes too,
/// ignoring errors).
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

static WRITERS: AtomicU32 = AtomicU32::new(0);

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, and writes the
    /// `file_version` event.
    pub fn create(dir: &Path) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{}",
            now() as u64,
            hostname(),
            std::process::id(),
            WRITERS.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        writer.add_event(&Event {
            wall_time: now(),
            step: 0,
            what: Some(proto::event::What::FileVersion(FILE_VERSION.into())),
        })?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event.
    pub fn add_event(&mut self, event: &Event) -> Result<()> {
        let record = encode_record(&event.encode_to_vec());
        self.out.write_all(&record).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn add_value(&mut self, step: i64, value: proto::summary::Value) -> Result<()> {
        self.add_event(&Event {
            wall_time: now(),
            step,
            what: Some(proto::event::What::Summary(Summary { value: vec![value] })),
        })
    }

    /// A scalar summary (`simple_value`, an f32 as TensorFlow stores it).
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        self.add_value(
            step,
            proto::summary::Value {
                tag: tag.into(),
                value: Some(proto::summary::value::Value::SimpleValue(value as f32)),
            },
        )
    }

    /// A histogram summary; see [`histogram_proto`].
    pub fn add_histogram(
        &mut self,
        tag: &str,
        histogram: &Histogram,
        range: &LossRange,
        step: i64,
    ) -> Result<()> {
        self.add_value(
            step,
            proto::summary::Value {
                tag: tag.into(),
                value: Some(proto::summary::value::Value::Histo(histogram_proto(
                    histogram, range,
                ))),
            },
        )
    }

    /// What an Estimator's evaluation writes: the scalars `loss` and
    /// `average_loss` and the histogram `loss_per_example`, at `step`.
    pub fn add_loss_summaries(
        &mut self,
        loss: f64,
        average_loss: f64,
        histogram: &Histogram,
        range: &LossRange,
        step: i64,
    ) -> Result<()> {
        self.add_scalar("loss", loss, step)?;
        self.add_scalar("average_loss", average_loss, step)?;
        self.add_histogram("loss_per_example", histogram, range, step)
    }

    /// Flushes to disk and returns the file's path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let path = self.path.clone();
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_all())
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("123456789") = 0xe3069283, the standard check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc32c(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn framing_matches_tensorflow_byte_for_byte() {
        // tf.io.TFRecordWriter's bytes for one record holding b"hello".
        let want = "0500000000000000eab2043e68656c6c6fbb1f1c19";
        let got: String = encode_record(b"hello")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn records_round_trip_and_corruption_is_caught() {
        let mut stream = encode_record(b"hello");
        stream.extend(encode_record(b""));
        let records = decode_records(&stream).unwrap();
        assert_eq!(records, [&b"hello"[..], &b""[..]]);
        for i in 0..stream.len() {
            let mut bad = stream.clone();
            bad[i] ^= 1;
            assert!(decode_records(&bad).is_err(), "flip at byte {i}");
        }
        assert!(decode_records(&stream[..stream.len() - 1]).is_err());
    }
}
