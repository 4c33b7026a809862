// Conv1D, the linear layer of GPT-2 (HF stores W as [in, out]):
//   forward            y = x·W + b (+ residual)                  → matmul_nn
//   backward to input  dx = dy·Wᵀ   (differentiates y = x·W in x) → matmul_nt
//   weight gradient    dW = xᵀ·dy   (… in W)                      → matmul_tn
//   bias gradient      db = Σ_rows dy  (differentiates y = … + b) → column_sum
// Both are GEMMs C (M×N) = A (M×K) · B or A · Bᵀ with leading dimensions and element offsets, so the
// same two kernels also serve the tied lm_head over vocabulary chunks: logits = x·wteᵀ (nt) and
// dx = dlogits·wte (nn, accumulated over chunks).
//
// Each invocation computes a 4×4 block of C in registers; a workgroup of 8×8 covers 32×32.
// Out-of-range rows/columns load from a clamped (valid) address and are not stored, which keeps
// the inner loop free of branches.

struct Params {
    m: u32, n: u32, k: u32,
    k_slice: u32, // linear_tiled.wgsl: K per slice of a GEMM split along K, 0 = not split

    lda: u32, ldb: u32, ldc: u32, _pad1: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad2: u32,
}

const HAS_BIAS: u32 = 1u;      // C += bias[col]
const HAS_RESIDUAL: u32 = 2u;  // C += residual[same index as C]
const ACCUMULATE: u32 = 4u;    // C += previous C (sums over vocabulary chunks)
const GELU_FORWARD: u32 = 8u;  // also gelu_aux = gelu_new(C): c_fc's output and its activation
const GELU_BACKWARD: u32 = 16u; // C ⊙= gelu_new'(gelu_aux): the gradient through the activation

// The epilogue's flags above, set per pipeline (src/layers/linear.rs): a kernel is compiled
// without the parts of the epilogue it does not apply. Flags read at run time cost every store a
// per-lane loop for each skipped load on llvmpipe, which runs both sides of a branch (masked).
override EPILOGUE: u32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(8) var<storage, read_write> gelu_aux: array<f32>; // same layout as C

// Writes C[row, col] = v + the epilogue (bias, residual, previous C; then gelu_new's forward or
// backward, see EPILOGUE), when inside C.
fn store(row: u32, col: u32, v: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let idx = p.c_off + row * p.ldc + col;
    var out = v;
    if ((EPILOGUE & HAS_BIAS) != 0u) {
        out += bias[col];
    }
    if ((EPILOGUE & HAS_RESIDUAL) != 0u) {
        out += residual[idx];
    }
    if ((EPILOGUE & ACCUMULATE) != 0u) {
        out += c[idx];
    }
    if ((EPILOGUE & GELU_FORWARD) != 0u) {
        gelu_aux[idx] = gelu_new(out);
    }
    if ((EPILOGUE & GELU_BACKWARD) != 0u) {
        out *= gelu_new_grad(gelu_aux[idx]);
    }
    c[idx] = out;
}

fn store_row(row: u32, col0: u32, acc: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        store(row, col0 + j, acc[j]);
    }
}

// Row offsets of A for the 4 rows of this block, clamped into range.
fn a_rows(row0: u32) -> vec4<u32> {
    let last = p.m - 1u;
    return vec4<u32>(
        p.a_off + min(row0, last) * p.lda,
        p.a_off + min(row0 + 1u, last) * p.lda,
        p.a_off + min(row0 + 2u, last) * p.lda,
        p.a_off + min(row0 + 3u, last) * p.lda,
    );
}

// C = A·B + epilogue, B is (K×N) row-major: y = x·W + b for Conv1D weights [in, out].
@compute @workgroup_size(8, 8)
fn matmul_nn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let ar = a_rows(row0);
    let last_col = p.n - 1u;
    let cols = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col));
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let brow = p.b_off + kk * p.ldb;
        let bv = vec4<f32>(b[brow + cols.x], b[brow + cols.y], b[brow + cols.z], b[brow + cols.w]);
        acc0 += a[ar.x + kk] * bv;
        acc1 += a[ar.y + kk] * bv;
        acc2 += a[ar.z + kk] * bv;
        acc3 += a[ar.w + kk] * bv;
    }
    store_row(row0, col0, acc0);
    store_row(row0 + 1u, col0, acc1);
    store_row(row0 + 2u, col0, acc2);
    store_row(row0 + 3u, col0, acc3);
}

// C = A·Bᵀ + epilogue, B is (N×K) row-major: dx = dy·Wᵀ for W [in, out] (N = in, K = out),
// and logits = x·wteᵀ for the tied lm_head.
@compute @workgroup_size(8, 8)
fn matmul_nt(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let ar = a_rows(row0);
    let last_col = p.n - 1u;
    let br = vec4<u32>(
        p.b_off + col0 * p.ldb,
        p.b_off + min(col0 + 1u, last_col) * p.ldb,
        p.b_off + min(col0 + 2u, last_col) * p.ldb,
        p.b_off + min(col0 + 3u, last_col) * p.ldb,
    );
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(b[br.x + kk], b[br.y + kk], b[br.z + kk], b[br.w + kk]);
        acc0 += a[ar.x + kk] * bv;
        acc1 += a[ar.y + kk] * bv;
        acc2 += a[ar.z + kk] * bv;
        acc3 += a[ar.w + kk] * bv;
    }
    store_row(row0, col0, acc0);
    store_row(row0 + 1u, col0, acc1);
    store_row(row0 + 2u, col0, acc2);
    store_row(row0 + 3u, col0, acc3);
}

// C = Aᵀ·B + epilogue, A is (K×M) and B (K×N) row-major, the sum running over their K rows:
// dW = xᵀ·dy for a Conv1D weight (K = the B·T rows), and dwte = dlogitsᵀ·x for the tied lm_head.
@compute @workgroup_size(8, 8)
fn matmul_tn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let last_row = p.m - 1u;
    let rows = vec4<u32>(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row));
    let last_col = p.n - 1u;
    let cols = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col));
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let arow = p.a_off + kk * p.lda;
        let brow = p.b_off + kk * p.ldb;
        let bv = vec4<f32>(b[brow + cols.x], b[brow + cols.y], b[brow + cols.z], b[brow + cols.w]);
        acc0 += a[arow + rows.x] * bv;
        acc1 += a[arow + rows.y] * bv;
        acc2 += a[arow + rows.z] * bv;
        acc3 += a[arow + rows.w] * bv;
    }
    store_row(row0, col0, acc0);
    store_row(row0 + 1u, col0, acc1);
    store_row(row0 + 2u, col0, acc2);
    store_row(row0 + 3u, col0, acc3);
}

// c[col] = Σ_{r < K} a[r·lda + col] for N columns: the bias gradient db = Σ_rows dy.
@compute @workgroup_size(64)
fn column_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col >= p.n) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.k; r++) {
        acc += a[p.a_off + r * p.lda + col];
    }
    store(0u, col, acc);
}
