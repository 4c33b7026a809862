// AdamW with global gradient-norm clipping (src/optim.rs has the formula and PyTorch's order):
//   grad_sq_sum   sq[slot] = Σ g²  over one parameter tensor (one workgroup; fixed summation order)
//   clip_scale    norm = sqrt(Σ_slots sq); scale = min(1, clip / (norm + 1e-6))   (1 when clip = 0)
//   adamw_update  p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
//                 p ← p − (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps),  g = scale·grad
// The per-step scalars (lr, bias corrections) live in a storage buffer the host rewrites every
// step, so the recorded plan never changes.

struct Params {
    n: u32, slot: u32, n_slots: u32, decay: u32,
    beta1: f32, beta2: f32, eps: f32, weight_decay: f32,
    grad_clip: f32, x_stride: u32, _pad0: u32, _pad1: u32,
}

// Host-written per step: lr, 1 − β1ᵗ, 1 − β2ᵗ. Kernel-written: the global norm and clip scale.
struct StepState {
    lr: f32, bias_correction1: f32, bias_correction2: f32, _pad: f32,
    grad_norm: f32, clip_scale: f32, _pad1: f32, _pad2: f32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;           // (n) one tensor
@group(0) @binding(2) var<storage, read_write> sq: array<f32>;       // (n_slots)
@group(0) @binding(3) var<storage, read_write> state: StepState;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;    // (n)
@group(0) @binding(5) var<storage, read_write> m: array<f32>;        // (n)
@group(0) @binding(6) var<storage, read_write> v: array<f32>;        // (n)
@group(0) @binding(7) var<storage, read> sq_in: array<f32>;          // (n_slots)

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn grad_sq_sum(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var s = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let g = grad[i];
        s += g * g;
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            partial[lid] += partial[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        sq[p.slot] = partial[0];
    }
}

@compute @workgroup_size(1)
fn clip_scale() {
    var total = 0.0;
    for (var i = 0u; i < p.n_slots; i++) {
        total += sq_in[i];
    }
    let norm = sqrt(total);
    var scale = 1.0;
    if (p.grad_clip > 0.0) {
        scale = min(1.0, p.grad_clip / (norm + 1e-6));
    }
    state.grad_norm = norm;
    state.clip_scale = scale;
}

@compute @workgroup_size(64)
fn adamw_update(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.x_stride;
    if (i >= p.n) {
        return;
    }
    let lr = state.lr;
    let g = grad[i] * state.clip_scale;
    var x = param[i];
    if (p.decay != 0u) {
        x *= 1.0 - lr * p.weight_decay;
    }
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) / sqrt(state.bias_correction2) + p.eps;
    param[i] = x - (lr / state.bias_correction1) * mi / denom;
}
