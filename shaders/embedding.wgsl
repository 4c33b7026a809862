// Token + position embedding: h_0[t] = wte[ids[t]] + wpe[t].
// wte can exceed one storage binding (GPT-2's is 147 MiB, XL's 307 MiB), so it is split into
// row chunks; each chunk's dispatch writes only the tokens whose id falls inside it, so every
// output element has exactly one writer.
// The backward of this layer produces weight gradients only (dwte, dwpe): activation gradients
// end at dL/dh_0, which the attention/LayerNorm backward already delivers.

struct Params {
    t: u32, c: u32, vocab_row0: u32, vocab_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;        // (T)
@group(0) @binding(2) var<storage, read> wte: array<f32>;        // (vocab_rows, C): one chunk
@group(0) @binding(3) var<storage, read> wpe: array<f32>;        // (P, C)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (T, C)

@compute @workgroup_size(64)
fn embedding_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let t = gid.y;
    if (col >= p.c || t >= p.t) {
        return;
    }
    let id = ids[t];
    if (id < p.vocab_row0 || id >= p.vocab_row0 + p.vocab_rows) {
        return;
    }
    out[t * p.c + col] = wte[(id - p.vocab_row0) * p.c + col] + wpe[t * p.c + col];
}
