// Causal multi-head self-attention of one layer, forward and backward, and Reversed Attention,
// for B sequences of T tokens (the batch index is the grid's z).
// qkv (B·T, 3C) holds Q | K | V; head h owns columns [h·hs, (h+1)·hs) of each block.
//
// forward
//   softmax_forward   A[h,i,j] = softmax_j(Q_i·K_j / sqrt(hs)) for j ≤ i, exactly 0 for j > i
//   values_forward    Z[i, h] = s_h · Σ_j (A + η·M)[h,i,j] · V_j      (η·M: attention patching,
//                                                                      s_h = 0 ablates head h)
// backward, from G = dL/dZ (the gradient at c_proj's input)
//   scores_backward       dA = G_h·Vᵀ;  R = A ⊙ (dA − rowsum(A ⊙ dA)) / sqrt(hs) = dL/d(Q·Kᵀ)
//                         (differentiates A = softmax(S), S = Q·Kᵀ/sqrt(hs); R is kept: it is RA)
//   query_backward        dQ = R·K         (differentiates P = Q·Kᵀ in Q)
//   key_value_backward    dK = Rᵀ·Q        (… in K)   and   dV = (A + η·M)ᵀ·G_h   (differentiates Z)
// Every output element has one writer: rows of A/R per workgroup, dQ per query row, dK/dV per key row.
// The *_vec4 entry points are the same kernels reading Q, K, V, G and writing Z, dQKV as vec4s
// (4 channels per load and per invocation: a quarter of the loads), used when hs and C are
// multiples of 4 (every GPT-2 size); they bind the same buffers at bindings 11–14.

struct Params {
    t: u32, c: u32, nh: u32, hs: u32,
    scale: f32, eta: f32, flags: u32, head_scale_off: u32,
}

const HAS_PATCH: u32 = 1u;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;          // (B·T, 3C)
@group(0) @binding(2) var<storage, read_write> att_out: array<f32>; // (B, NH, T, T)
@group(0) @binding(3) var<storage, read> att: array<f32>;          // (B, NH, T, T)
@group(0) @binding(4) var<storage, read> patch_map: array<f32>;    // (B, NH, T, T) or unused
@group(0) @binding(5) var<storage, read> head_scale: array<f32>;   // (L, NH)
@group(0) @binding(6) var<storage, read_write> z: array<f32>;      // (B·T, C)
@group(0) @binding(7) var<storage, read> dz: array<f32>;           // (B·T, C)
@group(0) @binding(8) var<storage, read_write> ra_out: array<f32>; // (B, NH, T, T)
@group(0) @binding(9) var<storage, read> ra: array<f32>;           // (B, NH, T, T)
@group(0) @binding(10) var<storage, read_write> dqkv: array<f32>;  // (B·T, 3C)
@group(0) @binding(11) var<storage, read> qkv4: array<vec4<f32>>;         // (B·T, 3C/4)
@group(0) @binding(12) var<storage, read_write> z4: array<vec4<f32>>;     // (B·T, C/4)
@group(0) @binding(13) var<storage, read> dz4: array<vec4<f32>>;          // (B·T, C/4)
@group(0) @binding(14) var<storage, read_write> dqkv4: array<vec4<f32>>;  // (B·T, 3C/4)

var<workgroup> partial: array<f32, WG>;

fn workgroup_reduce(v: f32, lid: u32, is_max: bool) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            if (is_max) {
                partial[lid] = max(partial[lid], partial[lid + s]);
            } else {
                partial[lid] += partial[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

// Row i of sequence `seq` is row seq·T + i of qkv, z and dz; its (h, i) attention row starts at
// ((seq·NH + h)·T + i)·T.
fn att_row(seq: u32, h: u32, i: u32) -> u32 { return ((seq * p.nh + h) * p.t + i) * p.t; }

fn q_at(i: u32, h: u32, d: u32) -> f32 { return qkv[i * 3u * p.c + h * p.hs + d]; }
fn k_at(j: u32, h: u32, d: u32) -> f32 { return qkv[j * 3u * p.c + p.c + h * p.hs + d]; }
fn v_at(j: u32, h: u32, d: u32) -> f32 { return qkv[j * 3u * p.c + 2u * p.c + h * p.hs + d]; }

// The attention weight that multiplies V: A, plus η·M when patching.
fn used_att(idx: u32) -> f32 {
    var a = att[idx];
    if ((p.flags & HAS_PATCH) != 0u) {
        a += p.eta * patch_map[idx];
    }
    return a;
}

// One workgroup per (query row i, head h).
@compute @workgroup_size(64)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let i = wid.x;
    let h = wid.y;
    let r0 = wid.z * p.t;
    let lid = lid3.x;
    let row = att_row(wid.z, h, i);
    // S = Q_i·K_j / sqrt(hs), kept in att_out until normalised
    var m = -3.0e38;
    for (var j = lid; j <= i; j += WG) {
        var s = 0.0;
        for (var d = 0u; d < p.hs; d++) {
            s += q_at(r0 + i, h, d) * k_at(r0 + j, h, d);
        }
        s *= p.scale;
        att_out[row + j] = s;
        m = max(m, s);
    }
    m = workgroup_reduce(m, lid, true);
    var sum = 0.0;
    for (var j = lid; j <= i; j += WG) {
        let e = exp(att_out[row + j] - m);
        att_out[row + j] = e;
        sum += e;
    }
    let inv = 1.0 / workgroup_reduce(sum, lid, false);
    for (var j = lid; j < p.t; j += WG) {
        if (j <= i) {
            att_out[row + j] *= inv;
        } else {
            att_out[row + j] = 0.0; // masked: exactly zero, as HF's softmax of finfo.min gives
        }
    }
}

// One invocation per (row i, channel h·hs + d).
@compute @workgroup_size(64)
fn values_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let i = gid.y;
    if (col >= p.c || i >= p.t) {
        return;
    }
    let r0 = gid.z * p.t;
    let h = col / p.hs;
    let d = col % p.hs;
    let row = att_row(gid.z, h, i);
    // Without a patch A[i, j > i] = 0, so the causal range suffices; a patch may touch any j.
    var j_end = i + 1u;
    if ((p.flags & HAS_PATCH) != 0u) {
        j_end = p.t;
    }
    var acc = 0.0;
    for (var j = 0u; j < j_end; j++) {
        acc += used_att(row + j) * v_at(r0 + j, h, d);
    }
    z[(r0 + i) * p.c + col] = head_scale[p.head_scale_off + h] * acc;
}

// One workgroup per (query row i, head h): dA and R for the row.
@compute @workgroup_size(64)
fn scores_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let i = wid.x;
    let h = wid.y;
    let r0 = wid.z * p.t;
    let lid = lid3.x;
    let row = att_row(wid.z, h, i);
    let gs = head_scale[p.head_scale_off + h];
    // dA[i,j] = G_i·V_j (only j ≤ i matters: A is 0 above the diagonal); r = Σ_j A·dA
    var r = 0.0;
    for (var j = lid; j <= i; j += WG) {
        var da = 0.0;
        for (var d = 0u; d < p.hs; d++) {
            da += dz[(r0 + i) * p.c + h * p.hs + d] * v_at(r0 + j, h, d);
        }
        da *= gs;
        ra_out[row + j] = da;
        r += att[row + j] * da;
    }
    r = workgroup_reduce(r, lid, false);
    for (var j = lid; j < p.t; j += WG) {
        if (j <= i) {
            ra_out[row + j] = att[row + j] * (ra_out[row + j] - r) * p.scale;
        } else {
            ra_out[row + j] = 0.0;
        }
    }
}

// One invocation per (query row i, channel): dQ[i] = Σ_{j ≤ i} R[i,j]·K_j.
@compute @workgroup_size(64)
fn query_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let i = gid.y;
    if (col >= p.c || i >= p.t) {
        return;
    }
    let r0 = gid.z * p.t;
    let h = col / p.hs;
    let d = col % p.hs;
    let row = att_row(gid.z, h, i);
    var acc = 0.0;
    for (var j = 0u; j <= i; j++) {
        acc += ra[row + j] * k_at(r0 + j, h, d);
    }
    dqkv[(r0 + i) * 3u * p.c + col] = acc;
}

// One invocation per (key row j, channel): dK[j] = Σ_{i ≥ j} R[i,j]·Q_i, dV[j] = Σ_i (A+η·M)[i,j]·G_i.
@compute @workgroup_size(64)
fn key_value_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let j = gid.y;
    if (col >= p.c || j >= p.t) {
        return;
    }
    let r0 = gid.z * p.t;
    let h = col / p.hs;
    let d = col % p.hs;
    let gs = head_scale[p.head_scale_off + h];
    var dk = 0.0;
    for (var i = j; i < p.t; i++) {
        dk += ra[att_row(gid.z, h, i) + j] * q_at(r0 + i, h, d);
    }
    var i0 = j;
    if ((p.flags & HAS_PATCH) != 0u) {
        i0 = 0u;
    }
    var dv = 0.0;
    for (var i = i0; i < p.t; i++) {
        dv += used_att(att_row(gid.z, h, i) + j) * dz[(r0 + i) * p.c + col];
    }
    dqkv[(r0 + j) * 3u * p.c + p.c + col] = dk;
    dqkv[(r0 + j) * 3u * p.c + 2u * p.c + col] = gs * dv;
}

// ---- vec4 variants (hs % 4 == 0, C % 4 == 0); indices in vec4 units ----

// Quad d4 of head h's Q, K or V in row r (block 0, 1, 2 of the row).
fn qkv_quad(r: u32, block: u32, h: u32, d4: u32) -> vec4<f32> {
    return qkv4[r * (3u * p.c / 4u) + block * (p.c / 4u) + h * (p.hs / 4u) + d4];
}

fn dot_q_k(qi: u32, kj: u32, h: u32) -> f32 {
    var s = 0.0;
    for (var d4 = 0u; d4 < p.hs / 4u; d4++) {
        s += dot(qkv_quad(qi, 0u, h, d4), qkv_quad(kj, 1u, h, d4));
    }
    return s;
}

@compute @workgroup_size(64)
fn softmax_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let i = wid.x;
    let h = wid.y;
    let r0 = wid.z * p.t;
    let lid = lid3.x;
    let row = att_row(wid.z, h, i);
    var m = -3.0e38;
    for (var j = lid; j <= i; j += WG) {
        let s = dot_q_k(r0 + i, r0 + j, h) * p.scale;
        att_out[row + j] = s;
        m = max(m, s);
    }
    m = workgroup_reduce(m, lid, true);
    var sum = 0.0;
    for (var j = lid; j <= i; j += WG) {
        let e = exp(att_out[row + j] - m);
        att_out[row + j] = e;
        sum += e;
    }
    let inv = 1.0 / workgroup_reduce(sum, lid, false);
    for (var j = lid; j < p.t; j += WG) {
        if (j <= i) {
            att_out[row + j] *= inv;
        } else {
            att_out[row + j] = 0.0;
        }
    }
}

// One invocation per (row i, channel quad).
@compute @workgroup_size(64)
fn values_forward_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c4 = gid.x;
    let i = gid.y;
    if (c4 >= p.c / 4u || i >= p.t) {
        return;
    }
    let r0 = gid.z * p.t;
    let h = 4u * c4 / p.hs;
    let row = att_row(gid.z, h, i);
    var j_end = i + 1u;
    if ((p.flags & HAS_PATCH) != 0u) {
        j_end = p.t;
    }
    let v0 = 2u * p.c / 4u + c4;
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < j_end; j++) {
        acc += used_att(row + j) * qkv4[(r0 + j) * (3u * p.c / 4u) + v0];
    }
    z4[(r0 + i) * (p.c / 4u) + c4] = head_scale[p.head_scale_off + h] * acc;
}

@compute @workgroup_size(64)
fn scores_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let i = wid.x;
    let h = wid.y;
    let r0 = wid.z * p.t;
    let lid = lid3.x;
    let row = att_row(wid.z, h, i);
    let gs = head_scale[p.head_scale_off + h];
    let g0 = (r0 + i) * (p.c / 4u) + h * (p.hs / 4u);
    var r = 0.0;
    for (var j = lid; j <= i; j += WG) {
        var da = 0.0;
        for (var d4 = 0u; d4 < p.hs / 4u; d4++) {
            da += dot(dz4[g0 + d4], qkv_quad(r0 + j, 2u, h, d4));
        }
        da *= gs;
        ra_out[row + j] = da;
        r += att[row + j] * da;
    }
    r = workgroup_reduce(r, lid, false);
    for (var j = lid; j < p.t; j += WG) {
        if (j <= i) {
            ra_out[row + j] = att[row + j] * (ra_out[row + j] - r) * p.scale;
        } else {
            ra_out[row + j] = 0.0;
        }
    }
}

@compute @workgroup_size(64)
fn query_backward_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c4 = gid.x;
    let i = gid.y;
    if (c4 >= p.c / 4u || i >= p.t) {
        return;
    }
    let r0 = gid.z * p.t;
    let h = 4u * c4 / p.hs;
    let row = att_row(gid.z, h, i);
    let k0 = p.c / 4u + c4;
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j <= i; j++) {
        acc += ra[row + j] * qkv4[(r0 + j) * (3u * p.c / 4u) + k0];
    }
    dqkv4[(r0 + i) * (3u * p.c / 4u) + c4] = acc;
}

@compute @workgroup_size(64)
fn key_value_backward_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c4 = gid.x;
    let j = gid.y;
    if (c4 >= p.c / 4u || j >= p.t) {
        return;
    }
    let r0 = gid.z * p.t;
    let h = 4u * c4 / p.hs;
    let gs = head_scale[p.head_scale_off + h];
    let stride = 3u * p.c / 4u;
    var dk = vec4<f32>(0.0);
    for (var i = j; i < p.t; i++) {
        dk += ra[att_row(gid.z, h, i) + j] * qkv4[(r0 + i) * stride + c4];
    }
    var i0 = j;
    if ((p.flags & HAS_PATCH) != 0u) {
        i0 = 0u;
    }
    var dv = vec4<f32>(0.0);
    for (var i = i0; i < p.t; i++) {
        dv += used_att(att_row(gid.z, h, i) + j) * dz4[(r0 + i) * (p.c / 4u) + c4];
    }
    dqkv4[(r0 + j) * stride + p.c / 4u + c4] = dk;
    dqkv4[(r0 + j) * stride + 2u * p.c / 4u + c4] = gs * dv;
}

// ---- one invocation per row (CPU adapters: llvmpipe runs a workgroup's lanes as SIMD on one
// thread, so a 64-wide workgroup per row wastes the idle lanes of short rows and pays for every
// barrier of its reductions; a row per invocation has neither). Grid: (ceil(T/64), NH, B).

// The end of a one-row-per-invocation softmax (the `*_rows` and `*_sg` kernels): att_out[row..]
// holds the scaled scores S[i, 0..=i] with maximum m; leaves A[i, 0..=i] = softmax(S[i, ·]) there.
// exp is computed twice rather than stored between the passes: on llvmpipe each per-lane store
// costs more than the exp. The row kernels never write above the diagonal: those entries stay
// as the buffer holds them, 0 in a fresh buffer (see Attention::forward).
fn softmax_finish_row(row: u32, i: u32, m: f32) {
    var sum = 0.0;
    for (var j = 0u; j <= i; j++) {
        sum += exp(att_out[row + j] - m);
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j <= i; j++) {
        att_out[row + j] = exp(att_out[row + j] - m) * inv;
    }
}

// The end of a one-row score backward: ra_out[row..] holds dA[i, 0..=i] and r = Σ_j A[i,j]·dA[i,j];
// leaves R[i, 0..=i] = A ⊙ (dA − r) / sqrt(hs) there (differentiates A = softmax(Q·Kᵀ/sqrt(hs)));
// like softmax_finish_row, it never writes above the diagonal.
fn ra_finish_row(row: u32, i: u32, r: f32) {
    for (var j = 0u; j <= i; j++) {
        ra_out[row + j] = att[row + j] * (ra_out[row + j] - r) * p.scale;
    }
}

@compute @workgroup_size(64)
fn softmax_forward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.t) {
        return;
    }
    let h = gid.y;
    let r0 = gid.z * p.t;
    let row = att_row(gid.z, h, i);
    var m = -3.0e38;
    for (var j = 0u; j <= i; j++) {
        var s = 0.0;
        if (p.hs % 4u == 0u) {
            s = dot_q_k(r0 + i, r0 + j, h);
        } else {
            for (var d = 0u; d < p.hs; d++) {
                s += q_at(r0 + i, h, d) * k_at(r0 + j, h, d);
            }
        }
        s *= p.scale;
        att_out[row + j] = s;
        m = max(m, s);
    }
    softmax_finish_row(row, i, m);
}

@compute @workgroup_size(64)
fn scores_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.t) {
        return;
    }
    let h = gid.y;
    let r0 = gid.z * p.t;
    let row = att_row(gid.z, h, i);
    let gs = head_scale[p.head_scale_off + h];
    var r = 0.0;
    for (var j = 0u; j <= i; j++) {
        var da = 0.0;
        if (p.hs % 4u == 0u) {
            let g0 = (r0 + i) * (p.c / 4u) + h * (p.hs / 4u);
            for (var d4 = 0u; d4 < p.hs / 4u; d4++) {
                da += dot(dz4[g0 + d4], qkv_quad(r0 + j, 2u, h, d4));
            }
        } else {
            for (var d = 0u; d < p.hs; d++) {
                da += dz[(r0 + i) * p.c + h * p.hs + d] * v_at(r0 + j, h, d);
            }
        }
        da *= gs;
        ra_out[row + j] = da;
        r += att[row + j] * da;
    }
    ra_finish_row(row, i, r);
}
