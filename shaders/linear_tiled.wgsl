// Conv1D GEMMs for real GPUs, compiled appended to linear.wgsl (its Params, bindings and store()):
// the same C (M×N) = op(A)·op(B) + epilogue as its portable kernels, with each workgroup's 64×64
// tile of C fed from workgroup memory. A workgroup stages a 64×16 slice of A and a 16×64 slice of
// B per step of K, so every element is fetched from global memory once per tile instead of once
// per invocation that needs it (16× fewer fetches), and each slice is fetched along the dimension
// its operand is contiguous in (coalesced). Out-of-range elements are staged as zeros, which
// keeps the product loop free of bounds checks; store() drops the out-of-range results.
//
// 16×16 invocations; invocation (lx, ly) accumulates rows 4·ly … 4·ly+3 and columns
// 4·lx … 4·lx+3 of the tile in registers.
//
// Split along K: a GEMM with few tiles of C and a long K (the one-prompt shapes, M = T rows; the
// lm_head backward, K = the vocabulary) would occupy a few of a GPU's compute units for K/16
// steps in a row. With `p.k_slice` > 0, workgroup z sums only K in [z·k_slice, (z+1)·k_slice)
// and writes its raw tile to slice z of `partial`; sum_k_slices then adds the slices and applies
// the epilogue.

const TILE_MN: u32 = 64u;  // rows (and columns) of C per workgroup
const TILE_K: u32 = 16u;   // steps of K staged per barrier
// Row stride of the staged slices in vec4s: 16 used + 1 of padding, so that the 16 invocations
// staging one row of the slice along K write to 8 banks (a 2-way conflict) instead of one.
const SLICE_STRIDE: u32 = 17u;

const OP_NN: u32 = 0u;
const OP_NT: u32 = 1u;
const OP_TN: u32 = 2u;

// Slice z's M×N partial product (rows packed, N per row) at z·M·N, for GEMMs split along K.
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;

// [k][row / 4]: TILE_K × TILE_MN rows of A, 4 rows per vec4 (the 4 rows one invocation reads).
var<workgroup> a_slice: array<vec4<f32>, 272>; // TILE_K · SLICE_STRIDE
// [k][col / 4]: TILE_K × TILE_MN columns of B, 4 columns per vec4.
var<workgroup> b_slice: array<vec4<f32>, 272>;

// op(A)[row, kk], 0 outside A: A is (M×K) row-major for nn and nt, (K×M) for tn.
fn a_element(op: u32, row: u32, kk: u32) -> f32 {
    var v = 0.0;
    if (row < p.m && kk < p.k) {
        if (op == OP_TN) {
            v = a[p.a_off + kk * p.lda + row];
        } else {
            v = a[p.a_off + row * p.lda + kk];
        }
    }
    return v;
}

// op(B)[kk, col], 0 outside B: B is (K×N) row-major for nn and tn, (N×K) for nt.
fn b_element(op: u32, kk: u32, col: u32) -> f32 {
    var v = 0.0;
    if (kk < p.k && col < p.n) {
        if (op == OP_NT) {
            v = b[p.b_off + col * p.ldb + kk];
        } else {
            v = b[p.b_off + kk * p.ldb + col];
        }
    }
    return v;
}

// Writes the 4×4 block at (row, col) to slice `slice` of `partial`, where inside C.
fn store_partial(slice: u32, row: u32, col: u32, acc: array<vec4<f32>, 4>) {
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            if (row + i < p.m && col + j < p.n) {
                partial[(slice * p.m + row + i) * p.n + col + j] = acc[i][j];
            }
        }
    }
}

fn tiled_gemm(op: u32, tile: vec3<u32>, lid: u32) {
    let row0 = tile.y * TILE_MN;
    let col0 = tile.x * TILE_MN;
    // this workgroup's span of K: all of it, or slice tile.z (a multiple of TILE_K long)
    var k_begin = 0u;
    var k_end = p.k;
    if (p.k_slice > 0u) {
        k_begin = tile.z * p.k_slice;
        k_end = min(p.k, k_begin + p.k_slice);
    }
    let lx = lid % 16u;
    let ly = lid / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // Stage the slices: 1024 elements each, 4 per invocation. Consecutive invocations take
        // consecutive addresses of the operand: along K where it is the contiguous dimension
        // (A of nn/nt, B of nt), along M or N otherwise.
        for (var i = 0u; i < 4u; i++) {
            let e = lid + 256u * i;
            var r: u32;
            var ka: u32;
            if (op == OP_TN) {
                ka = e / TILE_MN;
                r = e % TILE_MN;
            } else {
                r = e / TILE_K;
                ka = e % TILE_K;
            }
            a_slice[ka * SLICE_STRIDE + r / 4u][r % 4u] = a_element(op, row0 + r, k0 + ka);
            var c: u32;
            var kb: u32;
            if (op == OP_NT) {
                c = e / TILE_K;
                kb = e % TILE_K;
            } else {
                kb = e / TILE_MN;
                c = e % TILE_MN;
            }
            b_slice[kb * SLICE_STRIDE + c / 4u][c % 4u] = b_element(op, k0 + kb, col0 + c);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let av = a_slice[kk * SLICE_STRIDE + ly];
            let bv = b_slice[kk * SLICE_STRIDE + lx];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        // the next step overwrites the slices
        workgroupBarrier();
    }
    let row = row0 + 4u * ly;
    let col = col0 + 4u * lx;
    if (p.k_slice > 0u) {
        store_partial(tile.z, row, col, array<vec4<f32>, 4>(acc0, acc1, acc2, acc3));
        return;
    }
    store_row(row, col, acc0);
    store_row(row + 1u, col, acc1);
    store_row(row + 2u, col, acc2);
    store_row(row + 3u, col, acc3);
}

// C = A·B + epilogue: the forward y = x·W + b.
@compute @workgroup_size(256)
fn matmul_nn_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    tiled_gemm(OP_NN, wg, lid);
}

// C = A·Bᵀ + epilogue: dx = dy·Wᵀ, and logits = x·wteᵀ.
@compute @workgroup_size(256)
fn matmul_nt_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    tiled_gemm(OP_NT, wg, lid);
}

// C = Aᵀ·B + epilogue: dW = xᵀ·dy.
@compute @workgroup_size(256)
fn matmul_tn_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    tiled_gemm(OP_TN, wg, lid);
}

// C = Σ_z partial[z] + epilogue, one invocation per element of C: the second half of a GEMM
// split along K.
@compute @workgroup_size(256)
fn sum_k_slices(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.m * p.n) {
        return;
    }
    let slices = (p.k + p.k_slice - 1u) / p.k_slice;
    var v = 0.0;
    for (var z = 0u; z < slices; z++) {
        v += partial[z * p.m * p.n + i];
    }
    store(i / p.n, i % p.n, v);
}
