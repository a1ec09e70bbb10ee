// Per-class loss sums and counts, by label, without float atomics. Each
// workgroup owns a slice of `tiles` tiles of TILE rows and one accumulator
// per class for that slice. For each tile it sorts the rows by (label,
// non-finite, row) with a bitonic network, sums each run of equal labels
// with a segmented scan in float-float (a fixed tree), and the thread at the
// end of each run adds it into the slice's accumulator. Tiles go in order,
// so every sum has a fixed shape: the result is the same on every run.
// diagnostics_per_class_reduce.wgsl then adds the slices. Prepended with
// partial.wgsl (ff_add, opaque). CPU twin: PerClassLoss::add_losses in
// src/diagnostics/scores.rs. Host side: src/gpu/diagnostics.rs.

// Keep in sync with gpu::diagnostics::PER_CLASS_WORKGROUP_SIZE and
// PER_CLASS_TILE.
const WG: u32 = 256u;
const TILE: u32 = 1024u;
const ROW_BITS: u32 = 10u; // log2(TILE)
const FLAG_IGNORE_INDEX: u32 = 1u;
// Sorts after every row that is counted (labels stay below 2^21 - 1).
const NO_KEY: u32 = 0xffffffffu;

// Keep in sync with gpu::diagnostics::PerClassParams.
struct Params {
    rows: u32,      // rows in this round
    first: u32,     // the round's first row in `losses` and `labels`
    classes: u32,
    tiles: u32,     // tiles per slice
    slices: u32,    // workgroups in this round
    flags: u32,
    ignore_index: i32,
    zero: u32,      // always 0; see opaque()
}

// Keep in sync with gpu::diagnostics::ClassPartial.
struct ClassPartial {
    sum: vec2<f32>, // float-float sum of the finite losses
    count: u32,     // rows with a finite loss
    nonfinite: u32, // rows with a NaN or infinite loss
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> losses: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
// slices[s * classes + c]: slice s's accumulator of class c.
@group(0) @binding(3) var<storage, read_write> slices: array<ClassPartial>;

var<workgroup> keys: array<u32, TILE>;
var<workgroup> values: array<vec2<f32>, TILE>;

// A run: one class, finite or not.
fn run_of(key: u32) -> u32 {
    return key >> ROW_BITS;
}

// The first position whose key is at least `key` (keys are sorted).
fn lower_bound(key: u32) -> u32 {
    var lo = 0u;
    var hi = TILE;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if keys[mid] < key {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slice = wid.y * groups.x + wid.x;
    if slice >= params.slices {
        return;
    }
    let out = slice * params.classes;
    for (var tile = 0u; tile < params.tiles; tile += 1u) {
        let base = (slice * params.tiles + tile) * TILE;
        if base >= params.rows {
            break;
        }
        for (var p = 0u; p < TILE / WG; p += 1u) {
            let i = lid + p * WG;
            let n = base + i;
            var key = NO_KEY;
            var x = 0.0;
            if n < params.rows {
                let y = labels[params.first + n];
                let ignored = (params.flags & FLAG_IGNORE_INDEX) != 0u && y == params.ignore_index;
                if !ignored {
                    x = losses[params.first + n];
                    var nonfinite = 0u;
                    if !is_finite(x) {
                        nonfinite = 1u;
                        x = 0.0;
                    }
                    key = (u32(y) << (ROW_BITS + 1u)) | (nonfinite << ROW_BITS) | i;
                }
            }
            keys[i] = key;
            values[i] = vec2<f32>(x, 0.0);
        }
        // Bitonic sort of the keys, ascending; the low bits keep the row.
        for (var size = 2u; size <= TILE; size *= 2u) {
            for (var stride = size / 2u; stride > 0u; stride /= 2u) {
                workgroupBarrier();
                for (var p = 0u; p < TILE / (2u * WG); p += 1u) {
                    let pair = lid + p * WG;
                    let i = 2u * stride * (pair / stride) + pair % stride;
                    let j = i + stride;
                    let a = keys[i];
                    let b = keys[j];
                    if (a > b) == ((i & size) == 0u) {
                        keys[i] = b;
                        keys[j] = a;
                    }
                }
            }
        }
        workgroupBarrier();
        // Each sorted position takes the loss of its row.
        var mine: array<vec2<f32>, 4>; // TILE / WG
        for (var p = 0u; p < TILE / WG; p += 1u) {
            let key = keys[lid + p * WG];
            var x = vec2<f32>(0.0);
            if key != NO_KEY {
                x = values[key & (TILE - 1u)];
            }
            mine[p] = x;
        }
        workgroupBarrier();
        for (var p = 0u; p < TILE / WG; p += 1u) {
            values[lid + p * WG] = mine[p];
        }
        // Segmented inclusive scan (Hillis-Steele) within each run: after
        // the step of `offset`, values[i] sums the run's entries in
        // (i - 2 * offset, i].
        for (var offset = 1u; offset < TILE; offset *= 2u) {
            workgroupBarrier();
            for (var p = 0u; p < TILE / WG; p += 1u) {
                let i = lid + p * WG;
                var v = values[i];
                if i >= offset && run_of(keys[i - offset]) == run_of(keys[i]) {
                    v = ff_add(values[i - offset], v);
                }
                mine[p] = v;
            }
            workgroupBarrier();
            for (var p = 0u; p < TILE / WG; p += 1u) {
                values[lid + p * WG] = mine[p];
            }
        }
        workgroupBarrier();
        // The last entry of each run adds the run into the slice. A class's
        // finite and non-finite runs write different fields.
        for (var p = 0u; p < TILE / WG; p += 1u) {
            let i = lid + p * WG;
            let key = keys[i];
            if key == NO_KEY {
                continue;
            }
            let run = run_of(key);
            if i + 1u < TILE && run_of(keys[i + 1u]) == run {
                continue;
            }
            let run_length = i + 1u - lower_bound(run << ROW_BITS);
            let at = out + (key >> (ROW_BITS + 1u));
            if (run & 1u) == 1u {
                slices[at].nonfinite += run_length;
            } else {
                slices[at].sum = ff_add(slices[at].sum, values[i]);
                slices[at].count += run_length;
            }
        }
        // The next tile may add to the same classes from other threads.
        storageBarrier();
        workgroupBarrier();
    }
}
