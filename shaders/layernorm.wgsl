// LayerNorm over the C channels of each row (eps from config.json, biased variance):
//   forward   out = (x − mean)·rstd ⊙ w + b,  rstd = 1/sqrt(var + eps)
//   backward  dx = dresidual + (g − mean(g) − x̂·mean(g ⊙ x̂))·rstd,  g = dout ⊙ w,  x̂ = (x − mean)·rstd
//   weights   dw = Σ_rows dout ⊙ x̂,  db = Σ_rows dout   (differentiate out = x̂ ⊙ w + b in w and b)
// One workgroup per row; the residual stream's gradient is added here so no separate pass is needed.
// The backward reads dout only for rows [dout_row0, dout_row0 + dout_rows): ln_f's gradient exists
// only at the loss rows, every other row's dout is zero.

struct Params {
    rows: u32, c: u32, eps: f32, flags: u32,
    dout_row0: u32, dout_rows: u32, _pad0: u32, _pad1: u32,
}

const HAS_RESIDUAL: u32 = 1u;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (rows, C)
@group(0) @binding(2) var<storage, read> w: array<f32>;          // (C)
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (C)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (rows, C)
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>; // (rows)
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>; // (rows)
@group(0) @binding(7) var<storage, read> mean: array<f32>;       // (rows)
@group(0) @binding(8) var<storage, read> rstd: array<f32>;       // (rows)
@group(0) @binding(9) var<storage, read> dout: array<f32>;       // (dout_rows, C)
@group(0) @binding(10) var<storage, read> dresidual: array<f32>; // (rows, C)
@group(0) @binding(11) var<storage, read_write> dx: array<f32>;  // (rows, C)
@group(0) @binding(12) var<storage, read_write> dw: array<f32>;  // (C)
@group(0) @binding(13) var<storage, read_write> db: array<f32>;  // (C)

var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(v: f32, lid: u32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * 65535u;
    if (row >= p.rows) {
        return;
    }
    let lid = lid3.x;
    let base = row * p.c;
    var s = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        s += x[base + i];
    }
    let mu = workgroup_sum(s, lid) / f32(p.c);
    var s2 = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let d = x[base + i] - mu;
        s2 += d * d;
    }
    let r = inverseSqrt(workgroup_sum(s2, lid) / f32(p.c) + p.eps);
    for (var i = lid; i < p.c; i += WG) {
        out[base + i] = (x[base + i] - mu) * r * w[i] + bias[i];
    }
    if (lid == 0u) {
        mean_out[row] = mu;
        rstd_out[row] = r;
    }
}

@compute @workgroup_size(64)
fn layernorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * 65535u;
    if (row >= p.rows) {
        return;
    }
    let lid = lid3.x;
    let base = row * p.c;
    let has_dout = row >= p.dout_row0 && row < p.dout_row0 + p.dout_rows;
    let dbase = (row - min(row, p.dout_row0)) * p.c;
    let mu = mean[row];
    let r = rstd[row];
    // g = dout ⊙ w;  sums of g and g ⊙ x̂ over the row
    var sg = 0.0;
    var sgx = 0.0;
    if (has_dout) {
        for (var i = lid; i < p.c; i += WG) {
            let g = dout[dbase + i] * w[i];
            sg += g;
            sgx += g * (x[base + i] - mu) * r;
        }
    }
    let mean_g = workgroup_sum(sg, lid) / f32(p.c);
    let mean_gx = workgroup_sum(sgx, lid) / f32(p.c);
    for (var i = lid; i < p.c; i += WG) {
        var v = 0.0;
        if (has_dout) {
            let xhat = (x[base + i] - mu) * r;
            v = (dout[dbase + i] * w[i] - mean_g - xhat * mean_gx) * r;
        }
        if ((p.flags & HAS_RESIDUAL) != 0u) {
            v += dresidual[base + i];
        }
        dx[base + i] = v;
    }
}

// One invocation per channel, summing over the rows that have a dout (a single writer per output).
@compute @workgroup_size(64)
fn layernorm_param_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col >= p.c) {
        return;
    }
    var sw = 0.0;
    var sb = 0.0;
    for (var k = 0u; k < p.dout_rows; k++) {
        let row = p.dout_row0 + k;
        let g = dout[k * p.c + col];
        sw += g * (x[row * p.c + col] - mean[row]) * rstd[row];
        sb += g;
    }
    dw[col] = sw;
    db[col] = sb;
}

// ---- one invocation per row (CPU adapters: no barriers, no reductions across lanes) ----

@compute @workgroup_size(64)
fn layernorm_forward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x + gid.y * 65535u * 64u;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.c;
    var s = 0.0;
    for (var i = 0u; i < p.c; i++) {
        s += x[base + i];
    }
    let mu = s / f32(p.c);
    var s2 = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let d = x[base + i] - mu;
        s2 += d * d;
    }
    let r = inverseSqrt(s2 / f32(p.c) + p.eps);
    for (var i = 0u; i < p.c; i++) {
        out[base + i] = (x[base + i] - mu) * r * w[i] + bias[i];
    }
    mean_out[row] = mu;
    rstd_out[row] = r;
}

@compute @workgroup_size(64)
fn layernorm_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x + gid.y * 65535u * 64u;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.c;
    let has_dout = row >= p.dout_row0 && row < p.dout_row0 + p.dout_rows;
    let dbase = (row - min(row, p.dout_row0)) * p.c;
    let mu = mean[row];
    let r = rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    if (has_dout) {
        for (var i = 0u; i < p.c; i++) {
            let g = dout[dbase + i] * w[i];
            sg += g;
            sgx += g * (x[base + i] - mu) * r;
        }
    }
    let mean_g = sg / f32(p.c);
    let mean_gx = sgx / f32(p.c);
    for (var i = 0u; i < p.c; i++) {
        var v = 0.0;
        if (has_dout) {
            let xhat = (x[base + i] - mu) * r;
            v = (dout[dbase + i] * w[i] - mean_g - xhat * mean_gx) * r;
        }
        if ((p.flags & HAS_RESIDUAL) != 0u) {
            v += dresidual[base + i];
        }
        dx[base + i] = v;
    }
}
