// gelu_new, GPT-2's tanh approximation (gelu_math.wgsl, compiled in front of this file),
// element-wise over the MLP's hidden activations:
//   forward   y = gelu_new(x)
//   backward  dx = dy·gelu_new'(x)
// The engine applies both in the epilogues of the c_fc GEMM and of its backward instead
// (Linear::forward_gelu, Linear::backward_input_gelu); these kernels are the layer on its own.

struct Params {
    n: u32, row_stride: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(64)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_stride;
    if (i >= p.n) {
        return;
    }
    y[i] = gelu_new(x[i]);
}

@compute @workgroup_size(64)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_stride;
    if (i >= p.n) {
        return;
    }
    dx[i] = dy[i] * gelu_new_grad(x[i]);
}
