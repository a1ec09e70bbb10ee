// The k largest per-example losses, by loss descending then row ascending
// (the order of TopK in src/diagnostics/top_k.rs, the CPU twin `top_k`).
// Each workgroup sorts a tile of TILE (key, row) pairs with a bitonic
// network in workgroup memory and keeps the first `list` of them. The first
// pass reads the losses; each later pass reads the lists of the previous
// one, TILE / list lists per workgroup, until one list is left. Integer keys
// and a total order (rows are distinct) make every pass exact and the result
// independent of the workgroup count. Host side: src/gpu/diagnostics.rs.

// Keep in sync with gpu::diagnostics::TOP_K_WORKGROUP_SIZE and TOP_K_TILE.
const WG: u32 = 256u;
const TILE: u32 = 2048u;
const FLAG_LOSSES: u32 = 1u; // this pass reads losses, not lists
const FLAG_IGNORE_INDEX: u32 = 2u;
// Ranks after every real entry: no finite loss has key 0.
const NO_KEY: u32 = 0u;
const NO_ROW: u32 = 0xffffffffu;

// Keep in sync with gpu::diagnostics::TopKParams.
struct Params {
    count: u32,       // entries this pass reads
    list: u32,        // entries each workgroup keeps (a power of two <= TILE / 2)
    first_size: u32,  // first bitonic stage: 2, or 2 * list over sorted lists
    flags: u32,
    ignore_index: i32,
    in_offset: u32,   // where this pass's lists start in `entries`
    out_offset: u32,  // where its own lists go
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> losses: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
// (key, row) pairs: every pass's lists, one after the other.
@group(0) @binding(3) var<storage, read_write> entries: array<vec2<u32>>;

var<workgroup> keys: array<u32, TILE>;
var<workgroup> rows: array<u32, TILE>;

// A key whose unsigned order is the order of the finite losses, with -0
// equal to +0; NO_KEY for a loss that is not ranked.
fn order_key(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if (b & 0x7f800000u) == 0x7f800000u {
        return NO_KEY;
    }
    if (b & 0x7fffffffu) == 0u {
        b = 0u;
    }
    if (b & 0x80000000u) != 0u {
        return ~b;
    }
    return b | 0x80000000u;
}

// Whether entry (ka, ra) ranks before (kb, rb).
fn before(ka: u32, ra: u32, kb: u32, rb: u32) -> bool {
    return ka > kb || (ka == kb && ra < rb);
}

fn load(i: u32) -> vec2<u32> {
    if i >= params.count {
        return vec2<u32>(NO_KEY, NO_ROW);
    }
    if (params.flags & FLAG_LOSSES) == 0u {
        return entries[params.in_offset + i];
    }
    if (params.flags & FLAG_IGNORE_INDEX) != 0u && labels[i] == params.ignore_index {
        return vec2<u32>(NO_KEY, NO_ROW);
    }
    let key = order_key(losses[i]);
    if key == NO_KEY {
        return vec2<u32>(NO_KEY, NO_ROW);
    }
    return vec2<u32>(key, i);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * groups.x + wid.x;
    let base = group * TILE;
    if base >= params.count {
        return;
    }
    for (var p = 0u; p < TILE / WG; p += 1u) {
        let i = lid + p * WG;
        let e = load(base + i);
        keys[i] = e.x;
        rows[i] = e.y;
    }
    // Bitonic sort, best first. After stage `size` each block of `size`
    // entries is sorted, best first when (index & size) == 0 and best last
    // otherwise; lists written that way let a later pass start at 2 * list.
    for (var size = params.first_size; size <= TILE; size *= 2u) {
        for (var stride = size / 2u; stride > 0u; stride /= 2u) {
            workgroupBarrier();
            for (var p = 0u; p < TILE / (2u * WG); p += 1u) {
                let pair = lid + p * WG;
                let i = 2u * stride * (pair / stride) + pair % stride;
                let j = i + stride;
                let ki = keys[i];
                let ri = rows[i];
                let kj = keys[j];
                let rj = rows[j];
                let best_first = (i & size) == 0u;
                if before(kj, rj, ki, ri) == best_first {
                    keys[i] = kj;
                    rows[i] = rj;
                    keys[j] = ki;
                    rows[j] = ri;
                }
            }
        }
    }
    workgroupBarrier();
    // Keep the first `list`: best first in even workgroups, best last in odd
    // ones, so that the lists a later pass reads alternate as its first
    // stage needs.
    let list = params.list;
    let odd = (group & 1u) == 1u;
    for (var i = lid; i < list; i += WG) {
        var at = i;
        if odd {
            at = list - 1u - i;
        }
        entries[params.out_offset + group * list + at] = vec2<u32>(keys[i], rows[i]);
    }
}
