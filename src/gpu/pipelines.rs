//! The bind group layouts, and one compute pipeline per kernel variant,
//! built on first use and kept (the f32 forward, reduction and gradient
//! kernels, and the subgroup kernels where the device has subgroups, are
//! built up front).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use super::cross_entropy::{self as ce, SubgroupSizes};
use super::{compute_pipeline_with, reduce_partials, shader_source, Kernel, Variant};

pub(crate) struct Pipelines {
    forward: wgpu::BindGroupLayout,
    reduce: wgpu::BindGroupLayout,
    gradient: wgpu::BindGroupLayout,
    gradient_in_place: wgpu::BindGroupLayout,
    /// `None` where the device allows fewer than nine storage buffers per
    /// stage: the single-read kernels then only run in place.
    fused: Option<wgpu::BindGroupLayout>,
    fused_in_place: wgpu::BindGroupLayout,
    /// The device's subgroup sizes, where it has `Features::SUBGROUP`.
    subgroups: Option<SubgroupSizes>,
    /// The layout of the vec4 kernels (subgroup, narrow) with the logits
    /// bound again as vec4s, where the device has nine storage buffers per
    /// stage.
    vec4: Option<wgpu::BindGroupLayout>,
    /// The subgroup kernels' `SHARED_FINISH` override constant.
    shared_row_finish: bool,
    built: Mutex<HashMap<Variant, wgpu::ComputePipeline>>,
}

impl Pipelines {
    /// The layouts; [`Pipelines::build_up_front`] then builds the pipelines
    /// every context needs.
    pub(crate) fn new(device: &wgpu::Device, shared_row_finish: bool) -> Pipelines {
        let subgroups = device
            .features()
            .contains(wgpu::Features::SUBGROUP)
            .then(|| {
                let info = device.adapter_info();
                SubgroupSizes {
                    min: info.subgroup_min_size.max(1),
                    max: info.subgroup_max_size.max(info.subgroup_min_size).max(1),
                    workgroup: ce::SUBGROUP_WORKGROUP_SIZE,
                }
            });
        let nine_storage_buffers =
            device.limits().max_storage_buffers_per_shader_stage >= ce::FUSED_STORAGE_BUFFERS;
        Pipelines {
            forward: ce::layout(device),
            reduce: reduce_partials::layout(device),
            gradient: ce::gradient_layout(device, false),
            gradient_in_place: ce::gradient_layout(device, true),
            fused: nine_storage_buffers.then(|| ce::fused_layout(device, false)),
            fused_in_place: ce::fused_layout(device, true),
            subgroups,
            vec4: nine_storage_buffers.then(|| ce::vec4_layout(device)),
            shared_row_finish,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// Builds the f32 pipelines every context needs, in the workgroup sizes
    /// the context runs them in (`sizes`); `lane_rows`: the narrow kernel's
    /// vec4 variant too; `specialize_flags`: built for the flags of a call
    /// with no options (`GpuOptions::specialize_flags`).
    pub(crate) fn build_up_front(
        &self,
        device: &wgpu::Device,
        sizes: ce::Workgroups,
        lane_rows: bool,
        specialize_flags: bool,
    ) {
        let mut kernels = vec![
            (Kernel::Wide, sizes.wide),
            (Kernel::Narrow, sizes.narrow),
            (Kernel::Reduce, 0),
            (Kernel::Gradient, 0),
            (Kernel::GradientInPlace, 0),
        ];
        if self.subgroups.is_some() {
            kernels.push((Kernel::Subgroup, sizes.subgroups.workgroup));
        }
        if self.has_vec4() && self.subgroups.is_some() {
            kernels.push((Kernel::SubgroupVec4, sizes.subgroups.workgroup));
        }
        if self.has_vec4() && lane_rows {
            kernels.push((Kernel::NarrowVec4, sizes.narrow));
        }
        for (kernel, workgroup) in kernels {
            let flags = match kernel {
                _ if !specialize_flags => ce::ANY_FLAGS,
                Kernel::SubgroupVec4 | Kernel::NarrowVec4 => ce::FLAG_VEC4,
                // A gradient read twice takes each row's lse from the
                // forward pass.
                Kernel::Gradient | Kernel::GradientInPlace => ce::FLAG_ROW_STATS,
                _ => 0,
            };
            self.get(
                device,
                Variant {
                    workgroup,
                    flags,
                    ..Variant::f32(kernel)
                },
            );
        }
    }

    /// The device's subgroup sizes, where it has subgroups.
    pub(crate) fn subgroups(&self) -> Option<SubgroupSizes> {
        self.subgroups
    }

    /// Whether the vec4 kernels can bind the logits as vec4s on this device.
    pub(crate) fn has_vec4(&self) -> bool {
        self.vec4.is_some()
    }

    /// Whether the single-read kernels can write the gradient into a
    /// separate buffer on this device.
    pub(crate) fn fused_out_of_place(&self) -> bool {
        self.fused.is_some()
    }

    /// The bind group layout of `kernel`; the out-of-place single-read
    /// kernels only where [`Pipelines::fused_out_of_place`].
    pub(crate) fn layout(&self, kernel: Kernel) -> &wgpu::BindGroupLayout {
        match kernel {
            Kernel::Wide
            | Kernel::Narrow
            | Kernel::Subgroup
            | Kernel::Weights
            | Kernel::SplitRows
            | Kernel::SplitFinish => &self.forward,
            Kernel::SubgroupVec4 | Kernel::NarrowVec4 | Kernel::SplitLanes => self
                .vec4
                .as_ref()
                .expect("vec4 loads only where the device allows them"),
            Kernel::Reduce => &self.reduce,
            Kernel::Gradient => &self.gradient,
            Kernel::GradientInPlace => &self.gradient_in_place,
            Kernel::FusedWide | Kernel::FusedNarrow => self
                .fused
                .as_ref()
                .expect("single read out of place only where the device allows it"),
            Kernel::FusedWideInPlace | Kernel::FusedNarrowInPlace => &self.fused_in_place,
        }
    }

    /// The pipeline of `variant`, built on first use.
    pub(crate) fn get(&self, device: &wgpu::Device, variant: Variant) -> wgpu::ComputePipeline {
        let variant = variant.normalized();
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built
            .entry(variant)
            .or_insert_with(|| {
                let mut constants = Vec::new();
                if variant.workgroup != 0 {
                    constants.push(("WG", variant.workgroup as f64));
                }
                if variant.flags != ce::ANY_FLAGS {
                    constants.push(("FLAG_MASK", f64::from(variant.flags)));
                }
                if matches!(variant.kernel, Kernel::Subgroup | Kernel::SubgroupVec4) {
                    constants.push(("SHARED_FINISH", f64::from(u8::from(self.shared_row_finish))));
                }
                compute_pipeline_with(
                    device,
                    variant.kernel.label(),
                    Cow::Owned(shader_source(variant)),
                    self.layout(variant.kernel),
                    &constants,
                )
            })
            .clone()
    }
}
