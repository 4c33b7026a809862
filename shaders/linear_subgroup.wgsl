// The Conv1D forward GEMM for CPU adapters (lavapipe/llvmpipe), the same math as linear.wgsl's
// matmul_nn: C = A·B (+ bias, residual, accumulate) — y = x·W + b, and the lm_head backward
// dx = dlogits·wte.
// llvmpipe runs the 8 invocations of a subgroup as SIMD lanes and a workgroup on one thread: a load
// whose address differs per lane costs a loop over lanes, FMAs are cheap, shared memory is plain RAM.
// So a workgroup is exactly one subgroup of 8, B is read as vec4, and each A value one lane loads is
// broadcast to the other lanes with subgroupShuffle and used by 16 vec4 FMAs. Chosen at run time only
// when the adapter's subgroups are 8 wide and B's columns come in multiples of 4 (src/layers/linear.rs);
// linear.wgsl is the portable path and serves every other case. Measured here: about 2× the portable
// kernel (docs/BENCHMARKS.md).

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    lda: u32, ldb: u32, ldc: u32, _pad0: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad1: u32,
}

const HAS_BIAS: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;
const ACCUMULATE: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

fn store(row: u32, col: u32, acc: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let idx = p.c_off + row * p.ldc + col;
    var v = acc;
    if ((p.flags & HAS_BIAS) != 0u) {
        v += bias[col];
    }
    if ((p.flags & HAS_RESIDUAL) != 0u) {
        v += residual[idx];
    }
    if ((p.flags & ACCUMULATE) != 0u) {
        v += c[idx];
    }
    c[idx] = v;
}

fn store4(row: u32, col: u32, acc: vec4<f32>) {
    store(row, col, acc.x);
    store(row, col + 1u, acc.y);
    store(row, col + 2u, acc.z);
    store(row, col + 3u, acc.w);
}

// A[row, k..k+4] as scalars (A's leading dimension need not be a multiple of 4); 0 past K.
fn a_quad(row: u32, k: u32) -> vec4<f32> {
    let base = p.a_off + min(row, p.m - 1u) * p.lda;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (k + i < p.k) {
            v[i] = a[base + k + i];
        }
    }
    return v;
}

// One row of an nn tile: the lane's four vec4 columns c0, c0 + 32, c0 + 64, c0 + 96.
fn store_nn(row: u32, c0: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) {
    store4(row, c0, v0);
    store4(row, c0 + 32u, v1);
    store4(row, c0 + 64u, v2);
    store4(row, c0 + 96u, v3);
}

// C tile: 4 rows × 128 columns; lane l owns the vec4 columns l, l+8, l+16, l+24 of the tile.
// Each lane loads a vec4 of A per row per 32 k; the 32 values are broadcast with subgroupShuffle.
@compute @workgroup_size(8)
fn matmul_nn_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * 4u;
    if (row0 >= p.m) {
        return;
    }
    let n4 = p.n / 4u;
    let cv = wid.x * 32u + lane; // this lane's first vec4 column
    let cols = vec4<u32>(min(cv, n4 - 1u), min(cv + 8u, n4 - 1u), min(cv + 16u, n4 - 1u), min(cv + 24u, n4 - 1u));
    let b_off4 = p.b_off / 4u;
    let ldb4 = p.ldb / 4u;
    var acc: array<vec4<f32>, 16>; // [row r][column j] at r * 4 + j
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        let kk = k0 + 4u * lane;
        let q0 = a_quad(row0, kk);
        let q1 = a_quad(row0 + 1u, kk);
        let q2 = a_quad(row0 + 2u, kk);
        let q3 = a_quad(row0 + 3u, kk);
        let steps = min(32u, p.k - k0);
        for (var s = 0u; s < steps; s++) {
            let src = s / 4u;
            let comp = s % 4u;
            let x0 = subgroupShuffle(q0[comp], src);
            let x1 = subgroupShuffle(q1[comp], src);
            let x2 = subgroupShuffle(q2[comp], src);
            let x3 = subgroupShuffle(q3[comp], src);
            let brow = b_off4 + (k0 + s) * ldb4;
            let b0 = b4[brow + cols.x];
            let b1 = b4[brow + cols.y];
            let b2 = b4[brow + cols.z];
            let b3 = b4[brow + cols.w];
            acc[0] += x0 * b0; acc[1] += x0 * b1; acc[2] += x0 * b2; acc[3] += x0 * b3;
            acc[4] += x1 * b0; acc[5] += x1 * b1; acc[6] += x1 * b2; acc[7] += x1 * b3;
            acc[8] += x2 * b0; acc[9] += x2 * b1; acc[10] += x2 * b2; acc[11] += x2 * b3;
            acc[12] += x3 * b0; acc[13] += x3 * b1; acc[14] += x3 * b2; acc[15] += x3 * b3;
        }
    }
    // Constant indices only, so the accumulators stay in registers.
    let c0 = 4u * cv;
    store_nn(row0, c0, acc[0], acc[1], acc[2], acc[3]);
    store_nn(row0 + 1u, c0, acc[4], acc[5], acc[6], acc[7]);
    store_nn(row0 + 2u, c0, acc[8], acc[9], acc[10], acc[11]);
    store_nn(row0 + 3u, c0, acc[12], acc[13], acc[14], acc[15]);
}
