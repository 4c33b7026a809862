// Conv1D GEMMs for CPU adapters (lavapipe/llvmpipe), the same math as linear.wgsl:
//   matmul_nn_sg   C = A·B    forward y = x·W + b (+ residual)
//   matmul_nt_sg   C = A·Bᵀ   backward dx = dy·Wᵀ
//   matmul_tn_sg   C = Aᵀ·B   weight gradient dW = xᵀ·dy
//   matmul_nt_row_sg, matmul_nn_row_sg   one row of C at a time (the lm_head at the loss rows)
// llvmpipe runs the 8 invocations of a subgroup as SIMD lanes and a workgroup on one thread. Every
// load from a buffer costs far more than the FMAs it feeds (measured: a loop of 16 vec4 FMAs per vec4
// load runs at 1/15 of the same loop without the load), so what counts is FMAs per loaded value:
// a workgroup is one subgroup of 8; each lane loads one vec4 of two A rows and one (nt) or four (nn)
// vec4s of B per 4 k, and subgroupShuffle hands every lane all 16 rows' A values, so each loaded B
// value feeds 16 rows. Chosen at run time only where the adapter's subgroups are 8 wide and the
// operands are vec4-aligned (src/layers/linear.rs), and there mostly for what the faster texture
// kernels (linear_texture.wgsl, appended to this file) do not take: the one-row lm_head kernels,
// and operands too large to stage; linear.wgsl serves every other case. The parameters, bindings
// and store helpers here serve the texture kernels too.

struct Params {
    m: u32, n: u32, k: u32, _pad0: u32,
    lda: u32, ldb: u32, ldc: u32, _pad1: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad2: u32,
}

const HAS_BIAS: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;
const ACCUMULATE: u32 = 4u;
const GELU_FORWARD: u32 = 8u;   // also gelu_aux = gelu_new(C) (gelu_math.wgsl)
const GELU_BACKWARD: u32 = 16u; // C ⊙= gelu_new'(gelu_aux)
const TEXTURE_OUT: u32 = 32u;   // linear_texture.wgsl's tiles: the result goes to out_tex, not to C
                                // (with GELU_FORWARD: the activation, not to gelu_aux)

// The epilogue's flags above, set per pipeline (src/layers/linear.rs): a kernel is compiled
// without the parts of the epilogue it does not apply. Flags read at run time cost every store a
// per-lane loop for each skipped load on llvmpipe, which runs both sides of a branch (masked).
override EPILOGUE: u32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(8) var<storage, read_write> gelu_aux: array<f32>; // same layout as C

fn store(row: u32, col: u32, acc: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let idx = p.c_off + row * p.ldc + col;
    var v = acc;
    if ((EPILOGUE & HAS_BIAS) != 0u) {
        v += bias[col];
    }
    if ((EPILOGUE & HAS_RESIDUAL) != 0u) {
        v += residual[idx];
    }
    if ((EPILOGUE & ACCUMULATE) != 0u) {
        v += c[idx];
    }
    if ((EPILOGUE & GELU_FORWARD) != 0u) {
        gelu_aux[idx] = gelu_new(v);
    }
    if ((EPILOGUE & GELU_BACKWARD) != 0u) {
        v *= gelu_new_grad(gelu_aux[idx]);
    }
    c[idx] = v;
}

fn store4(row: u32, col: u32, acc: vec4<f32>) {
    store(row, col, acc.x);
    store(row, col + 1u, acc.y);
    store(row, col + 2u, acc.z);
    store(row, col + 3u, acc.w);
}

// Row offsets (in vec4) of A rows row0 + lane and row0 + 8 + lane, clamped into range.
fn a_rows(row0: u32, lane: u32) -> vec2<u32> {
    let lda4 = p.lda / 4u;
    return vec2<u32>(
        p.a_off / 4u + min(row0 + lane, p.m - 1u) * lda4,
        p.a_off / 4u + min(row0 + 8u + lane, p.m - 1u) * lda4,
    );
}

// Row r (0..8) of the A quads loaded by lane r, broadcast to every lane.
fn from_lane(q: vec4<f32>, r: u32) -> vec4<f32> {
    return vec4<f32>(subgroupShuffle(q.x, r), subgroupShuffle(q.y, r), subgroupShuffle(q.z, r), subgroupShuffle(q.w, r));
}

// C tile: 16 rows × 32 columns; lane l owns vec4 column l of the tile.
@compute @workgroup_size(8)
fn matmul_nn_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * 16u;
    let cv = wid.x * 8u + lane;
    let ldb4 = p.ldb / 4u;
    let bcol = p.b_off / 4u + min(cv, p.n / 4u - 1u);
    let ar = a_rows(row0, lane);
    var acc: array<vec4<f32>, 16>; // row r of the tile
    for (var k4 = 0u; k4 < p.k / 4u; k4++) {
        let qa = a4[ar.x + k4];
        let qb = a4[ar.y + k4];
        // B rows 4·k4 … 4·k4 + 3 at this lane's 4 columns
        let brow = bcol + 4u * k4 * ldb4;
        let b0 = b4[brow];
        let b1 = b4[brow + ldb4];
        let b2 = b4[brow + 2u * ldb4];
        let b3 = b4[brow + 3u * ldb4];
        for (var r = 0u; r < 8u; r++) {
            let xa = from_lane(qa, r);
            let xb = from_lane(qb, r);
            acc[r] += xa.x * b0 + xa.y * b1 + xa.z * b2 + xa.w * b3;
            acc[r + 8u] += xb.x * b0 + xb.y * b1 + xb.z * b2 + xb.w * b3;
        }
    }
    for (var r = 0u; r < 16u; r++) {
        store4(row0 + r, 4u * cv, acc[r]);
    }
}

// C tile: 16 rows × 8 columns; lane l owns column l of the tile and reads its B row as vec4s.
@compute @workgroup_size(8)
fn matmul_nt_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * 16u;
    let col = wid.x * 8u + lane;
    let brow = p.b_off / 4u + min(col, p.n - 1u) * (p.ldb / 4u);
    let ar = a_rows(row0, lane);
    var acc: array<vec4<f32>, 16>; // row r of the tile, 4 partial sums over k
    for (var k4 = 0u; k4 < p.k / 4u; k4++) {
        let qa = a4[ar.x + k4];
        let qb = a4[ar.y + k4];
        let bq = b4[brow + k4];
        for (var r = 0u; r < 8u; r++) {
            acc[r] += from_lane(qa, r) * bq;
            acc[r + 8u] += from_lane(qb, r) * bq;
        }
    }
    for (var r = 0u; r < 16u; r++) {
        store(row0 + r, col, dot(acc[r], vec4<f32>(1.0)));
    }
}

// C tile: 16 rows × 32 columns of C = Aᵀ·B (A is K×M, so row k of A holds the tile's 16 rows
// contiguously); lane l owns vec4 column l of the tile. Two k per step: lanes 0–3 load the 4 A
// quads of row k, lanes 4–7 those of row k + 1, and subgroupShuffle hands them to every lane; each
// lane loads its B quad of rows k and k + 1. 3 loads feed 32 vec4 FMAs.
@compute @workgroup_size(8)
fn matmul_tn_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * 16u;
    let cv = wid.x * 8u + lane;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    let bcol = p.b_off / 4u + min(cv, p.n / 4u - 1u);
    let a_col = p.a_off / 4u + min(row0 / 4u + lane % 4u, p.m / 4u - 1u);
    let second = lane >= 4u;
    var acc: array<vec4<f32>, 16>; // row r of the tile
    for (var k = 0u; k < p.k; k += 2u) {
        let k1 = min(k + 1u, p.k - 1u);
        let keep1 = select(0.0, 1.0, k + 1u < p.k); // odd K: the last step's second row is 0
        let qa = a4[a_col + select(k, k1, second) * lda4];
        let b0 = b4[bcol + k * ldb4];
        let b1 = keep1 * b4[bcol + k1 * ldb4];
        for (var q = 0u; q < 4u; q++) {
            let x0 = from_lane(qa, q);      // A[k, row0 + 4q … 4q + 3]
            let x1 = from_lane(qa, q + 4u); // A[k + 1, …]
            acc[4u * q] += x0.x * b0 + x1.x * b1;
            acc[4u * q + 1u] += x0.y * b0 + x1.y * b1;
            acc[4u * q + 2u] += x0.z * b0 + x1.z * b1;
            acc[4u * q + 3u] += x0.w * b0 + x1.w * b1;
        }
    }
    for (var r = 0u; r < 16u; r++) {
        store4(row0 + r, 4u * cv, acc[r]);
    }
}

// One row of C = A·Bᵀ (the lm_head at the last position: logits = x·wteᵀ): lane l owns column
// n0 + l and reads its B row as vec4s; the 8 lanes load consecutive vec4s of the A row together and
// share them with subgroupShuffle, so each lane loads one A vec4 per 8.
@compute @workgroup_size(8)
fn matmul_nt_row_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let col = wid.x * 8u + lane;
    let brow = p.b_off / 4u + min(col, p.n - 1u) * (p.ldb / 4u);
    let a0 = p.a_off / 4u;
    let k4n = p.k / 4u;
    var acc = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < k4n; k0 += 8u) {
        let mine = a4[a0 + min(k0 + lane, k4n - 1u)];
        for (var s = 0u; s < 8u; s++) {
            // past K: a clamped (valid) B quad times zero
            let keep = select(0.0, 1.0, k0 + s < k4n);
            acc += keep * from_lane(mine, s) * b4[brow + min(k0 + s, k4n - 1u)];
        }
    }
    store(0u, col, dot(acc, vec4<f32>(1.0)));
}

// A few rows of C = A·B whose K, lda or A offset is not vec4-aligned (the lm_head backward at the
// loss rows: dx = dlogits·wte, K = V = 50257): workgroup (x, row) computes 32 columns of C row
// `row`; lane l owns vec4 column l. The 8 lanes load 8 consecutive A values together and share them
// with subgroupBroadcast, so each B quad loaded feeds one FMA and nothing is loaded twice.
@compute @workgroup_size(8)
fn matmul_nn_row_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row = wid.y;
    let cv = wid.x * 8u + lane;
    let ldb4 = p.ldb / 4u;
    let bcol = p.b_off / 4u + min(cv, p.n / 4u - 1u);
    let arow = p.a_off + row * p.lda;
    var acc = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += 8u) {
        // past K: A reads as 0 and B row K - 1 (valid) is loaded
        let ka = min(k0 + lane, p.k - 1u);
        let mine = select(0.0, a4[(arow + ka) / 4u][(arow + ka) % 4u], k0 + lane < p.k);
        let last = p.k - 1u;
        acc += subgroupBroadcast(mine, 0u) * b4[bcol + min(k0, last) * ldb4];
        acc += subgroupBroadcast(mine, 1u) * b4[bcol + min(k0 + 1u, last) * ldb4];
        acc += subgroupBroadcast(mine, 2u) * b4[bcol + min(k0 + 2u, last) * ldb4];
        acc += subgroupBroadcast(mine, 3u) * b4[bcol + min(k0 + 3u, last) * ldb4];
        acc += subgroupBroadcast(mine, 4u) * b4[bcol + min(k0 + 4u, last) * ldb4];
        acc += subgroupBroadcast(mine, 5u) * b4[bcol + min(k0 + 5u, last) * ldb4];
        acc += subgroupBroadcast(mine, 6u) * b4[bcol + min(k0 + 6u, last) * ldb4];
        acc += subgroupBroadcast(mine, 7u) * b4[bcol + min(k0 + 7u, last) * ldb4];
    }
    store4(row, 4u * cv, acc);
}
