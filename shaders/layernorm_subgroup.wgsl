// LayerNorm for CPU adapters with 8-lane subgroups (lavapipe), the same math as layernorm.wgsl:
//   forward   out = (x − mean)·rstd ⊙ w + b,  rstd = 1/sqrt(var + eps)
//   backward  dx = dresidual + (g − mean(g) − x̂·mean(g ⊙ x̂))·rstd,  g = dout ⊙ w
// A workgroup is one subgroup and owns one row: lane l reads quads l, l + 8, … of the row and
// subgroupAdd finishes the sums, so there is no barrier (on llvmpipe each costs a switch of every
// invocation) and a prompt's T rows spread over the CPU's threads. For C a multiple of 4; the
// parameter gradients stay in layernorm.wgsl.

struct Params {
    rows: u32, c: u32, eps: f32, flags: u32,
    dout_row0: u32, dout_rows: u32, _pad0: u32, _pad1: u32,
}

const HAS_RESIDUAL: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;          // (rows, C/4)
@group(0) @binding(2) var<storage, read> w4: array<vec4<f32>>;          // (C/4)
@group(0) @binding(3) var<storage, read> b4: array<vec4<f32>>;          // (C/4)
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;  // (rows, C/4)
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;    // (rows)
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;    // (rows)
@group(0) @binding(7) var<storage, read> mean: array<f32>;              // (rows)
@group(0) @binding(8) var<storage, read> rstd: array<f32>;              // (rows)
@group(0) @binding(9) var<storage, read> dout4: array<vec4<f32>>;       // (dout_rows, C/4)
@group(0) @binding(10) var<storage, read> dresidual4: array<vec4<f32>>; // (rows, C/4)
@group(0) @binding(11) var<storage, read_write> dx4: array<vec4<f32>>;  // (rows, C/4)

// Every read of x and dout goes through these two functions. On CPU adapters the engine compiles
// this file a second time with them reading read-only storage textures that the plan stages x and
// dout into (src/layers/layernorm.rs): llvmpipe loads a texel for all 8 lanes with inline vector
// code, where a storage-buffer load is a loop over the lanes.
fn x_at(i: u32) -> vec4<f32> { return x4[i]; }
fn dout_at(i: u32) -> vec4<f32> { return dout4[i]; }

// Σ over the subgroup of the 4 components of every lane's v.
fn row_sum(v: vec4<f32>) -> f32 {
    return subgroupAdd(v.x + v.y + v.z + v.w);
}

@compute @workgroup_size(8)
fn layernorm_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row = wid.x + wid.y * 65535u;
    if (row >= p.rows) {
        return; // the whole subgroup
    }
    let c4 = p.c / 4u;
    let base = row * c4;
    var s = vec4<f32>(0.0);
    for (var i = lane; i < c4; i += 8u) {
        s += x_at(base + i);
    }
    let mu = row_sum(s) / f32(p.c);
    var s2 = vec4<f32>(0.0);
    for (var i = lane; i < c4; i += 8u) {
        let d = x_at(base + i) - mu;
        s2 += d * d;
    }
    let r = inverseSqrt(row_sum(s2) / f32(p.c) + p.eps);
    for (var i = lane; i < c4; i += 8u) {
        out4[base + i] = (x_at(base + i) - mu) * r * w4[i] + b4[i];
    }
    if (lane == 0u) {
        mean_out[row] = mu;
        rstd_out[row] = r;
    }
}

@compute @workgroup_size(8)
fn layernorm_backward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row = wid.x + wid.y * 65535u;
    if (row >= p.rows) {
        return; // the whole subgroup
    }
    let c4 = p.c / 4u;
    let base = row * c4;
    let has_dout = row >= p.dout_row0 && row < p.dout_row0 + p.dout_rows;
    let dbase = (row - min(row, p.dout_row0)) * c4;
    let mu = mean[row];
    let r = rstd[row];
    // g = dout ⊙ w;  sums of g and g ⊙ x̂ over the row
    var sg = vec4<f32>(0.0);
    var sgx = vec4<f32>(0.0);
    if (has_dout) {
        for (var i = lane; i < c4; i += 8u) {
            let g = dout_at(dbase + i) * w4[i];
            sg += g;
            sgx += g * (x_at(base + i) - mu) * r;
        }
    }
    let mean_g = row_sum(sg) / f32(p.c);
    let mean_gx = row_sum(sgx) / f32(p.c);
    for (var i = lane; i < c4; i += 8u) {
        var v = vec4<f32>(0.0);
        if (has_dout) {
            let xhat = (x_at(base + i) - mu) * r;
            v = (dout_at(dbase + i) * w4[i] - mean_g - xhat * mean_gx) * r;
        }
        if ((p.flags & HAS_RESIDUAL) != 0u) {
            v += dresidual4[base + i];
        }
        dx4[base + i] = v;
    }
}
