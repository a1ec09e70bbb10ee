// Library, no entry point: the shared-memory tree that combines a
// workgroup's per-invocation partials in a fixed order (pairs i, i + s for
// s = WG/2, WG/4, ..., 1). Prepended after partial.wgsl to the narrow,
// subgroup, weights, split-finish and reduce kernels; the including file
// declares `WG`, a power of two, as its workgroup size.

var<workgroup> shared_partials: array<Partial, WG>;

// Combines every invocation's `partial`; the workgroup's lands in
// shared_partials[0], for invocation 0 to read. Call it from uniform
// control flow, with every invocation of the workgroup.
fn combine_workgroup_partials(lid: u32, partial: Partial) {
    shared_partials[lid] = partial;
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if lid < stride {
            shared_partials[lid] = combine(shared_partials[lid], shared_partials[lid + stride]);
        }
    }
}
