// Library, no entry point: the workgroup partial and its compensated
// arithmetic, shared by the cross-entropy kernels and reduce_partials.wgsl.
// The host prepends it (gpu::shader_source). The including shader declares
// a uniform `params` with a field `zero: u32` that is always 0.

const NO_ROW: u32 = 0xffffffffu;

// Keep in sync with gpu::Partial. Float sums are float-float (hi, lo).
struct Partial {
    sum: vec2<f32>,               // Σ L_n
    weight_sum: vec2<f32>,        // Σ ω_n
    sample_weight_sum: vec2<f32>, // Σ s_n over rows not ignored
    count: u32,
    nonzero_count: u32,
    nonfinite_rows: u32,
    first_bad_row: u32,
    bad_label: i32,
    first_nonfinite_row: u32,
    first_bad_weight_row: u32,    // first row with a negative or NaN sample weight
    bad_weight: f32,              // its weight
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// An identity the compiler cannot see through (params.zero is always 0).
// Without it, fast-math rewrites ((a + b) - a) to b and erases the two-sum.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ params.zero);
}

// Error-free sum of two float-floats (Knuth two-sum, then renormalise).
fn ff_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = opaque(a.x + b.x);
    if !is_finite(s) {
        return vec2<f32>(s, 0.0);
    }
    let bb = opaque(s - a.x);
    let e = (a.x - opaque(s - bb)) + (b.x - bb);
    let t = opaque(e + a.y + b.y);
    let hi = opaque(s + t);
    return vec2<f32>(hi, t - opaque(hi - s));
}

fn identity_partial() -> Partial {
    return Partial(vec2<f32>(0.0), vec2<f32>(0.0), vec2<f32>(0.0), 0u, 0u, 0u, NO_ROW, 0i, NO_ROW, NO_ROW, 0.0);
}

// Order-free except for the float-float sums, which callers combine in a
// fixed order.
fn combine(a: Partial, b: Partial) -> Partial {
    var out = a;
    out.sum = ff_add(a.sum, b.sum);
    out.weight_sum = ff_add(a.weight_sum, b.weight_sum);
    out.sample_weight_sum = ff_add(a.sample_weight_sum, b.sample_weight_sum);
    out.count = a.count + b.count;
    out.nonzero_count = a.nonzero_count + b.nonzero_count;
    out.nonfinite_rows = a.nonfinite_rows + b.nonfinite_rows;
    if b.first_bad_row < a.first_bad_row {
        out.first_bad_row = b.first_bad_row;
        out.bad_label = b.bad_label;
    }
    out.first_nonfinite_row = min(a.first_nonfinite_row, b.first_nonfinite_row);
    if b.first_bad_weight_row < a.first_bad_weight_row {
        out.first_bad_weight_row = b.first_bad_weight_row;
        out.bad_weight = b.bad_weight;
    }
    return out;
}
