// Library, no entry point: the wide kernels' workgroup (one row at a time,
// threads striding over the classes) and its shared-memory tree, shared by
// cross_entropy_wide.wgsl and cross_entropy_fused_wide.wgsl.

// The default is gpu::cross_entropy::WIDE_WORKGROUP_SIZE; the host may
// override it (GpuOptions::wide_workgroup_size).
override WG: u32 = 128u;

var<workgroup> sh_max: array<f32, WG>;
var<workgroup> sh_sum: array<f32, WG>;
var<workgroup> sh_acc: array<f32, WG>;
var<workgroup> sh_tot: array<f32, WG>;
var<workgroup> sh_bad: array<u32, WG>;

fn share(lid: u32, sums: RowSums) {
    sh_max[lid] = sums.lse.x;
    sh_sum[lid] = sums.lse.y;
    sh_acc[lid] = sums.acc;
    sh_tot[lid] = sums.total;
    sh_bad[lid] = sums.bad;
}

// Tree-reduces the shared arrays into slot 0; call from uniform control flow.
fn reduce_workgroup(lid: u32) -> RowSums {
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if lid < stride {
            let merged = lse_merge(
                vec2<f32>(sh_max[lid], sh_sum[lid]),
                vec2<f32>(sh_max[lid + stride], sh_sum[lid + stride]),
            );
            sh_max[lid] = merged.x;
            sh_sum[lid] = merged.y;
            sh_acc[lid] += sh_acc[lid + stride];
            sh_tot[lid] += sh_tot[lid + stride];
            sh_bad[lid] |= sh_bad[lid + stride];
        }
    }
    workgroupBarrier();
    let out = RowSums(vec2<f32>(sh_max[0], sh_sum[0]), sh_acc[0], sh_tot[0], sh_bad[0]);
    // Everyone has read slot 0 before the next row overwrites it.
    workgroupBarrier();
    return out;
}
