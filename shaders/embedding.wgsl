// Token + position embedding of B right-padded sequences of T tokens (rows = B·T):
//   forward   h_0[r] = wte[ids[r]] + wpe[r mod T]
//   backward  dwte[v] (+)= Σ_{r: ids[r] = v} dh_0[r]   (differentiates wte[ids[r]]; adds to the
//                                                      tied lm_head's gradient already in dwte)
//             dwpe[t]  = Σ_b dh_0[b·T + t] for t < T, 0 for the positions no sequence reached
// wte can exceed one storage binding (GPT-2's is 147 MiB, XL's 307 MiB), so it is split into
// row chunks; each chunk's dispatch writes only the tokens whose id falls inside it, so every
// output element has exactly one writer. (embedding_texture.wgsl: the forward reading wte's
// chunks from textures.) The backward reads, per vocabulary row, the positions
// holding that token (a CSR index built on the host with the ids), so no thread scans all rows.

struct Params {
    t: u32, c: u32, vocab_row0: u32, vocab_rows: u32,
    rows: u32, n_positions: u32, flags: u32, _pad0: u32,
}

const ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;             // (B·T)
@group(0) @binding(2) var<storage, read> wte: array<f32>;             // (vocab_rows, C): one chunk
@group(0) @binding(3) var<storage, read> wpe: array<f32>;             // (P, C)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;       // (B·T, C)
@group(0) @binding(5) var<storage, read> dh: array<f32>;              // (B·T, C) dL/dh_0
@group(0) @binding(6) var<storage, read> token_start: array<u32>;     // (V + 1) CSR offsets
@group(0) @binding(7) var<storage, read> token_rows: array<u32>;      // (B·T) rows grouped by id
@group(0) @binding(8) var<storage, read_write> dwte: array<f32>;      // (vocab_rows, C): one chunk
@group(0) @binding(9) var<storage, read_write> dwpe: array<f32>;      // (P, C)

@compute @workgroup_size(64)
fn embedding_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let r = gid.y;
    if (col >= p.c || r >= p.rows) {
        return;
    }
    let id = ids[r];
    if (id < p.vocab_row0 || id >= p.vocab_row0 + p.vocab_rows) {
        return;
    }
    out[r * p.c + col] = wte[(id - p.vocab_row0) * p.c + col] + wpe[(r % p.t) * p.c + col];
}

// One invocation per (vocabulary row of this chunk, channel).
@compute @workgroup_size(64)
fn token_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let v = gid.y;
    if (col >= p.c || v >= p.vocab_rows) {
        return;
    }
    let id = p.vocab_row0 + v;
    var acc = 0.0;
    for (var k = token_start[id]; k < token_start[id + 1u]; k++) {
        acc += dh[token_rows[k] * p.c + col];
    }
    let idx = v * p.c + col;
    if ((p.flags & ACCUMULATE) != 0u) {
        acc += dwte[idx];
    }
    dwte[idx] = acc;
}

// One invocation per (position, channel), over all n_positions rows of wpe.
@compute @workgroup_size(64)
fn position_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let t = gid.y;
    if (col >= p.c || t >= p.n_positions) {
        return;
    }
    var acc = 0.0;
    if (t < p.t) {
        for (var r = t; r < p.rows; r += p.t) {
            acc += dh[r * p.c + col];
        }
    }
    dwpe[t * p.c + col] = acc;
}
