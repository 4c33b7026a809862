// The embedding's forward with wte's chunks read from textures, for inference engines on CPU
// adapters: they keep wte as textures only, the layout the lm_head reads (src/engine.rs), and make
// buffers of it only for a pass that needs them. Compiled appended to embedding.wgsl (its
// parameters and bindings), with texel_layout.wgsl in front; wte_tex is rgba16float when the
// weights are f16 (the load widens the halves).

@group(0) @binding(10) var wte_tex: texture_storage_2d<rgba32float, read>; // (vocab_rows · C / 4) texels

// h_0[r] = wte[ids[r]] + wpe[r mod T], the chunk's rows read from its texture: one invocation per
// (quad of channels, row), C a multiple of 4.
@compute @workgroup_size(64)
fn embedding_forward_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    let quad = gid.x;
    let r = gid.y;
    let c4 = p.c / 4u;
    if (quad >= c4 || r >= p.rows) {
        return;
    }
    let id = ids[r];
    if (id < p.vocab_row0 || id >= p.vocab_row0 + p.vocab_rows) {
        return;
    }
    let token = textureLoad(wte_tex, texel_at((id - p.vocab_row0) * c4 + quad));
    let col = 4u * quad;
    let pos = (r % p.t) * p.c + col;
    let o = r * p.c + col;
    out[o] = token.x + wpe[pos];
    out[o + 1u] = token.y + wpe[pos + 1u];
    out[o + 2u] = token.z + wpe[pos + 2u];
    out[o + 3u] = token.w + wpe[pos + 3u];
}
