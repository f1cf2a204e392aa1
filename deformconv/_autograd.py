# Autograd for deformconv::deform_conv2d through the C++ backward op (the double backward is in _double_backward.py).
import torch


def _setup_context(ctx, inputs, output):
    input, weight, offset, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight, offset, mask, bias)
    ctx.conv_args = (stride, padding, dilation)


def _backward(ctx, grad_output):
    input, weight, offset, mask, bias = ctx.saved_tensors
    if not any(ctx.needs_input_grad[:5]):
        return (None,) * 8
    grad_input, grad_weight, grad_offset, grad_mask, grad_bias = (
        torch.ops.deformconv._deform_conv2d_backward(
            grad_output, input, weight, offset, mask, bias, *ctx.conv_args
        )
    )
    return (
        grad_input,
        grad_weight,
        grad_offset,
        grad_mask if mask is not None else None,
        grad_bias if bias is not None else None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "deformconv::deform_conv2d", _backward, setup_context=_setup_context
)
