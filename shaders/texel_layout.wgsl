// Where an operand's vec4 number i lives in the textures the engine stages operands into and keeps
// weights in: texel (i mod 1024, i / 1024), rows of TEXTURE_ROW_TEXELS = 1024 texels (src/gpu.rs,
// `GpuContext::upload_texels`, and the plans' stagings in src/layers/mod.rs). Compiled in front of
// every module that reads such textures.
fn texel_at(i: u32) -> vec2<u32> {
    return vec2<u32>(i & 1023u, i >> 10u);
}

