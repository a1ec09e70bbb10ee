//! Timestamp queries around a compute pass (`Features::TIMESTAMP_QUERY`).

use std::sync::Mutex;

/// Timestamp queries around each call's compute pass.
pub(crate) struct Timer {
    pub(crate) queries: wgpu::QuerySet,
    pub(crate) resolved: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period: f64,
    last: Mutex<Option<std::time::Duration>>,
}

impl Timer {
    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        Timer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass_time"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pass_time"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period: queue.get_timestamp_period() as f64,
            last: Mutex::new(None),
        }
    }

    pub(crate) fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Records the two ticks read back from `bytes` (16 bytes).
    pub(crate) fn record(&self, bytes: &[u8]) {
        let ticks: [u64; 2] = bytemuck::pod_read_unaligned(&bytes[..16]);
        let nanos = ticks[1].saturating_sub(ticks[0]) as f64 * self.period;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(std::time::Duration::from_nanos(nanos.round() as u64));
        }
    }

    /// The last recorded pass time.
    pub(crate) fn last(&self) -> Option<std::time::Duration> {
        *self.last.lock().ok()?
    }
}
