// gelu_new, GPT-2's tanh approximation, and its derivative, compiled into gelu.wgsl and into the
// GEMM kernels (linear.wgsl, linear_subgroup.wgsl and the kernels appended to it), whose epilogue
// applies them to c_fc's output so that no separate pass over the MLP's activations is needed:
//   gelu_new(x)       = 0.5·x·(1 + tanh(u)),  u = sqrt(2/π)·(x + 0.044715·x³)
//   gelu_new_grad(x)  = 0.5·(1 + t) + 0.5·x·(1 − t²)·sqrt(2/π)·(1 + 3·0.044715·x²),  t = tanh(u)

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

// tanh written through exp so that large |u| saturates to ±1 instead of overflowing to NaN.
fn safe_tanh(u: f32) -> f32 {
    return 1.0 - 2.0 / (exp(2.0 * clamp(u, -40.0, 40.0)) + 1.0);
}

fn gelu_new(x: f32) -> f32 {
    return 0.5 * x * (1.0 + safe_tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
}

// d gelu_new(x) / dx
fn gelu_new_grad(x: f32) -> f32 {
    let t = safe_tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
}
