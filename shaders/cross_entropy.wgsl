// The loss on the logits of the loss rows, and its gradient (see src/loss.rs):
//   loss_r    = lse_scale[r]·logsumexp(logits[r]) + Σ_{terms in row r} coef·logits[r, id]
//   dlogits_r = lse_scale[r]·softmax(logits[r])   + Σ_{terms in row r} coef·onehot(id)
// nll, ce, logit-diff and the training loss are all this form. One workgroup per row; thread 0
// adds the row's sparse terms (grouped by row: term_start is their CSR index) after the dense
// softmax is written, so each element still has a single writer at a time.

struct Params {
    rows: u32, v: u32, _pad0: u32, _pad1: u32,
}

struct Term {
    row: u32, id: u32, coef: f32, _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;          // (R, V)
@group(0) @binding(2) var<storage, read> lse_scale: array<f32>;       // (R)
@group(0) @binding(3) var<storage, read> terms: array<Term>;          // (n_terms) sorted by row
@group(0) @binding(6) var<storage, read> term_start: array<u32>;      // (R + 1)
@group(0) @binding(7) var<storage, read> row_ids: array<u32>;         // (R) gathered rows
@group(0) @binding(8) var<storage, read> rows_in: array<f32>;         // gather: (N, C); scatter: (R, C)
@group(0) @binding(9) var<storage, read_write> rows_out: array<f32>;  // gather: (R, C); scatter: (N, C)
@group(0) @binding(10) var<storage, read> row_slot: array<i32>;       // (N) index into the R rows, or −1
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;   // (R, V)
@group(0) @binding(5) var<storage, read_write> loss_rows: array<f32>; // (R)

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

@compute @workgroup_size(64)
fn loss_forward_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wid.x;
    let lid = lid3.x;
    let base = r * p.v;
    var m = -3.0e38;
    for (var i = lid; i < p.v; i += WG) {
        m = max(m, logits[base + i]);
    }
    m = workgroup_reduce(m, lid, true);
    var s = 0.0;
    for (var i = lid; i < p.v; i += WG) {
        s += exp(logits[base + i] - m);
    }
    let lse = m + log(workgroup_reduce(s, lid, false));
    let a = lse_scale[r];
    for (var i = lid; i < p.v; i += WG) {
        dlogits[base + i] = a * exp(logits[base + i] - lse);
    }
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        var loss = a * lse;
        for (var k = term_start[r]; k < term_start[r + 1u]; k++) {
            let term = terms[k];
            dlogits[base + term.id] += term.coef;
            loss += term.coef * logits[base + term.id];
        }
        loss_rows[r] = loss;
    }
}

// When the loss reads scattered rows (a training batch: the answer positions), the lm_head and
// the loss run on those rows only: gather_rows copies them out of ln_f's output, scatter_rows puts
// their gradient back into a full (N, C) buffer, zero at every other row. Params: rows = R (gather)
// or N (scatter), v = C.

@compute @workgroup_size(64)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let r = gid.y;
    if (col >= p.v || r >= p.rows) {
        return;
    }
    rows_out[r * p.v + col] = rows_in[row_ids[r] * p.v + col];
}

@compute @workgroup_size(64)
fn scatter_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let n = gid.y;
    if (col >= p.v || n >= p.rows) {
        return;
    }
    let slot = row_slot[n];
    var g = 0.0;
    if (slot >= 0) {
        g = rows_in[u32(slot) * p.v + col];
    }
    rows_out[n * p.v + col] = g;
}
