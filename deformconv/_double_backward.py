# Double backward of deform_conv2d: autograd of the backward op through the C++ double-backward op.
"""Gradients of gradients (gradient penalties, Hessian-vector products).

``torch.ops.deformconv._deform_conv2d_backward`` is made differentiable with respect to
all its tensor inputs (grad_output, input, weight, offset, mask; bias does not enter its
results) by ``torch.ops.deformconv._deform_conv2d_double_backward``, which is the exact
derivative of the zero-padded bilinear sampling: the pure second derivatives in y·y and
x·x are 0, the cross term is not, and every derivative is 0 where a sample is defined as
0. CPU and CUDA kernels; a third derivative raises NotImplementedError.

Example::

    >>> from deformconv import DeformConv2dPack
    >>> x = torch.randn(1, 4, 8, 8, requires_grad=True)
    >>> layer = DeformConv2dPack(4, 4, 3, padding=1)
    >>> (gx,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    >>> gx.pow(2).sum().backward()  # the gradient penalty reaches every parameter
    >>> layer.conv_offset.weight.grad is not None
    True
"""

import torch


def _setup_context(ctx, inputs, output):
    grad_output, input, weight, offset, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(grad_output, input, weight, offset, mask)
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation)
    ctx.set_materialize_grads(False)  # absent cotangents stay None: their terms are skipped


def _backward_of_backward(ctx, gg_input, gg_weight, gg_offset, gg_mask, gg_bias):
    """Tensor[N, C_out, H_out, W_out], Tensor[N, C_in, H, W], Tensor[C_out, C_in/g, kh, kw],
    Tensor[N, 2*og*kh*kw, H_out, W_out], Tensor[N, og*kh*kw, H_out, W_out] (or None each):
    the gradients of <gg_*, backward results> with respect to the backward's inputs."""
    grad_output, input, weight, offset, mask = ctx.saved_tensors
    needs = ctx.needs_input_grad
    output_mask = [needs[0], needs[1], needs[2], needs[3], needs[4] and mask is not None]
    if not any(output_mask):
        return (None,) * 9
    results = torch.ops.deformconv._deform_conv2d_double_backward(
        grad_output,
        input,
        weight,
        offset,
        mask,
        gg_input,
        gg_weight,
        gg_offset,
        gg_mask if mask is not None else None,
        gg_bias if ctx.has_bias else None,
        *ctx.conv_args,
        output_mask,
    )
    grads = tuple(r if want else None for r, want in zip(results, output_mask))
    return grads + (None,) * 4


def _no_third_derivative(ctx, *grads):
    raise NotImplementedError(
        "deformconv: third derivatives of deform_conv2d are not supported (double backward is)"
    )


torch.library.register_autograd(
    "deformconv::_deform_conv2d_backward", _backward_of_backward, setup_context=_setup_context
)
torch.library.register_autograd(
    "deformconv::_deform_conv2d_double_backward",
    _no_third_derivative,
    setup_context=lambda ctx, inputs, output: None,
)
