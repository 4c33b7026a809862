// The tied lm_head and the loss at a few loss rows, forward and backward in one pass over wte
// (CPU adapters, wte in textures: kept by an inference engine, or staged once per pass). With
// x_r = ln_f(h)[row r] and the loss of src/loss.rs (cross_entropy.wgsl):
//   logits[r, v] = x_r · wte[v]
//   loss_r       = a_r·logsumexp(logits[r]) + Σ_{terms of row r} coef·logits[r, id]
//   dx_r         = dlogits_r · wte = a_r·Σ_v softmax(logits[r])_v·wte[v] + Σ_{terms} coef·wte[id]
// Run as a GEMV, the forward and the backward each read all of wte (V·C values, 154 MB for GPT-2 in
// f32) and memory bounds both. Here each wte row is fetched once and feeds its logit and, while
// its quads are still in hand, the softmax-weighted sum of rows:
//   lm_head_blocks   one workgroup per block of BLOCK_ROWS vocab rows and loss row: the block's
//                    logits, m_b = their max, s_b = Σ exp(l − m_b), acc_b = Σ exp(l − m_b)·wte[v]
//                    (rescaled when the running max grows: rarely, after the first rows); the first
//                    block of each chunk also sums the terms' rows that fall in its chunk.
//   lm_head_combine  merges the blocks: m = max m_b, s = Σ s_b·exp(m_b − m),
//                    dx = a/s·Σ_b exp(m_b − m)·acc_b + the terms' sums, loss = a·(m + log s) + terms.
// A workgroup is one subgroup of 8 lanes; lane l owns quads l, l + 8, … of a C-long row, so the 8
// lanes fetch 128 contiguous bytes of a wte row at a time, and a logit is one subgroupAdd.

struct Params {
    c: u32,           // C, a multiple of 4
    v: u32,           // V: the logits' row stride
    chunk_row0: u32,  // this chunk's first vocab row
    chunk_rows: u32,  // vocab rows in this chunk
    block0: u32,      // index of this chunk's first block among all blocks
    blocks: u32,      // NB: blocks over all chunks
    chunk: u32,       // this chunk's index
    chunks: u32,      // wte's chunks
    x_off: u32,       // element offset of loss row 0 in x (a multiple of 4)
    flags: u32,       // WITH_GRAD: the backward's sums too (else logits, m_b, s_b only)
    _pad0: u32,
    _pad1: u32,
}

struct Term {
    row: u32, id: u32, coef: f32, _pad: u32,
}

const WITH_GRAD: u32 = 1u;
const BLOCK_ROWS: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;              // (R, C) loss rows, from x_off
@group(0) @binding(2) var<storage, read> lse_scale: array<f32>;            // (R) a_r
@group(0) @binding(3) var<storage, read> terms: array<Term>;               // grouped by row
@group(0) @binding(4) var<storage, read> term_start: array<u32>;           // (R + 1)
@group(0) @binding(5) var<storage, read_write> logits: array<f32>;         // (R, V)
@group(0) @binding(6) var<storage, read_write> block_stats: array<vec2<f32>>; // (R, NB): (m_b, s_b)
@group(0) @binding(7) var<storage, read_write> block_acc: array<vec4<f32>>;   // (R, NB, C/4)
@group(0) @binding(8) var<storage, read_write> chunk_terms: array<vec4<f32>>; // (R, chunks, C/4)
@group(0) @binding(9) var<storage, read_write> loss_rows: array<f32>;      // (R)
@group(0) @binding(10) var<storage, read_write> dx: array<vec4<f32>>;      // (R, C/4)
@group(0) @binding(11) var wte_tex: texture_storage_2d<rgba32float, read>;  // chunk rows × C/4 texels

// A lane's quads are separate variables, not an array: llvmpipe keeps a private array indexed in a
// loop in scratch memory and gathers every access lane by lane, while variables live in registers
// (or plain stack slots). So this kernel is a template: each line marked `per quad` is written once
// for each of the lane's QUADS = C/32 (rounded up) quads, with `#` replaced by the quad's number
// (src/layers/lm_head.rs); quad # of lane l is quad l + 8·# of the row.
@compute @workgroup_size(8)
fn lm_head_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let r = wid.y;
    let q4 = p.c / 4u;
    let x0 = p.x_off / 4u + r * q4;
    let v0 = wid.x * BLOCK_ROWS;
    let v1 = min(v0 + BLOCK_ROWS, p.chunk_rows);
    let grad = (p.flags & WITH_GRAD) != 0u;
    // past the row's end a lane fetches a valid quad and holds x = 0 for it
    let q_# = min(lane + 8u * #u, q4 - 1u); // per quad
    let x_# = select(vec4<f32>(0.0), x[x0 + q_#], lane + 8u * #u < q4); // per quad
    var acc_# = vec4<f32>(0.0); // per quad
    var m = -3.0e38;
    var s = 0.0;
    for (var v = v0; v < v1; v++) {
        let row = v * q4;
        let w_# = textureLoad(wte_tex, texel_at(row + q_#)); // per quad
        var d = vec4<f32>(0.0);
        d += x_# * w_#; // per quad
        let l = subgroupAdd(d.x + d.y + d.z + d.w);
        if (lane == 0u) {
            logits[r * p.v + p.chunk_row0 + v] = l;
        }
        if (l > m) {
            // the running max grows: rescale what was summed against the old one
            let rescale = exp(m - l);
            s *= rescale;
            acc_# *= rescale; // per quad
            m = l;
        }
        let e = exp(l - m);
        s += e;
        if (grad) {
            acc_# += e * w_#; // per quad
        }
    }
    let b = r * p.blocks + p.block0 + wid.x;
    if (lane == 0u) {
        block_stats[b] = vec2<f32>(m, s);
    }
    if (!grad) {
        return;
    }
    if (lane + 8u * #u < q4) { block_acc[b * q4 + q_#] = acc_#; } // per quad
    if (wid.x != 0u) {
        return;
    }
    // Σ coef·wte[id] over row r's terms whose id lies in this chunk
    acc_# = vec4<f32>(0.0); // per quad
    for (var k = term_start[r]; k < term_start[r + 1u]; k++) {
        let t = terms[k];
        if (t.id < p.chunk_row0 || t.id >= p.chunk_row0 + p.chunk_rows) {
            continue;
        }
        let row = (t.id - p.chunk_row0) * q4;
        acc_# += t.coef * textureLoad(wte_tex, texel_at(row + q_#)); // per quad
    }
    let slot = (r * p.chunks + p.chunk) * q4;
    if (lane + 8u * #u < q4) { chunk_terms[slot + q_#] = acc_#; } // per quad
}

// Grid (C/4 / 8 rounded up, R): lane l of workgroup g owns quad 8g + l of dx_r; every lane merges
// the blocks' (m_b, s_b) itself (a few hundred pairs), and workgroup 0's lane 0 writes the loss.
@compute @workgroup_size(8)
fn lm_head_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let r = wid.y;
    let q4 = p.c / 4u;
    var m = -3.0e38;
    for (var b = 0u; b < p.blocks; b++) {
        m = max(m, block_stats[r * p.blocks + b].x);
    }
    var s = 0.0;
    for (var b = 0u; b < p.blocks; b++) {
        let st = block_stats[r * p.blocks + b];
        s += st.y * exp(st.x - m);
    }
    let a = lse_scale[r];
    if (wid.x == 0u && lane == 0u) {
        var loss = a * (m + log(s));
        for (var k = term_start[r]; k < term_start[r + 1u]; k++) {
            let t = terms[k];
            loss += t.coef * logits[r * p.v + t.id];
        }
        loss_rows[r] = loss;
    }
    let q = wid.x * 8u + lane;
    if ((p.flags & WITH_GRAD) == 0u || q >= q4) {
        return;
    }
    var g = vec4<f32>(0.0);
    for (var b = 0u; b < p.blocks; b++) {
        g += exp(block_stats[r * p.blocks + b].x - m) * block_acc[(r * p.blocks + b) * q4 + q];
    }
    g *= a / s;
    for (var c = 0u; c < p.chunks; c++) {
        g += chunk_terms[(r * p.chunks + c) * q4 + q];
    }
    dx[r * q4 + q] = g;
}
