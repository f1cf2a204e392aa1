# Triton kernels of the fused (implicit-GEMM) deformable convolution: forward, input-side backward, weight backward.
"""The three kernels sample the input inside the GEMM's K loop; no column buffer is written.

Shared layout (built by ``launch.py``):

- ``x``: the input as ``Tensor[N, H, W, C_in]`` contiguous (NHWC), so the C channels of one
  corner are one contiguous run;
- ``w``: the weight as ``Tensor[groups, kh*kw*C_g, C_og]`` contiguous (``C_g = C_in/groups``,
  ``C_og = C_out/groups``), K ordered (tap, channel) to match the K loop;
- offset, mask, output and grad_output in any strides (passed per call).

An output pixel ``m`` of the GEMM's M = N*H_out*W_out rows is ``(n, ho, wo)``. The K loop runs
over taps and over blocks of BLOCK_K channels of the weight group; a channel block may straddle
an offset-group boundary, so its A tile is the sum over the (usually one) offset groups it
touches, each masked to its channels. Sampling is exactly ``csrc/common/bilinear.h``: a point is 0
unless -1 < y < H and -1 < x < W (comparisons NaN fails; no coordinate becomes an integer
before that test), each corner outside the image reads 0. All index math that can pass 2**31 is
int64.
"""

import triton
import triton.language as tl


@triton.jit
def _pixels(pid_m, M, Ho, Wo, BLOCK_M: tl.constexpr):
    """Rows pid_m*BLOCK_M + [0, BLOCK_M) of M as (n, ho, wo) int64, and the row mask."""
    # int64 rows (pid_m is a tensor or, in a loop under the interpreter, a Python int)
    m = (tl.zeros((BLOCK_M,), dtype=tl.int64) + pid_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = m < M
    m = tl.where(valid, m, 0)
    hw = Ho * Wo
    n = m // hw
    r = m - n * hw
    ho = r // Wo
    wo = r - ho * Wo
    return n, ho, wo, valid


@triton.jit
def _cell(
    off_ptr,
    msk_ptr,
    n,
    ho,
    wo,
    pix_ok,
    o,
    tap,
    KH: tl.constexpr,
    KW: tl.constexpr,
    H,
    W,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    so_n,
    so_c,
    so_h,
    so_w,
    sm_n,
    sm_c,
    sm_h,
    sm_w,
    HAS_MASK: tl.constexpr,
):
    """The bilinear cell of tap ``tap`` in offset group ``o`` for each pixel (vectors [BLOCK_M]).

    Returns (y0, x0, ly, lx, mask value, valid): the top-left corner (int64, only meaningful
    where valid), the fraction inside the cell, the modulation and whether the sample is defined
    (in range and finite). Where not valid the position is replaced by 0 before the floor.
    """
    i = tap // KW
    j = tap - i * KW
    ch = 2 * (o * (KH * KW) + tap)
    base = n * so_n + ho * so_h + wo * so_w
    dy = tl.load(off_ptr + base + ch * so_c, mask=pix_ok, other=0.0).to(tl.float32)
    dx = tl.load(off_ptr + base + (ch + 1) * so_c, mask=pix_ok, other=0.0).to(tl.float32)
    py = (ho * sh - ph + i * dh).to(tl.float32) + dy
    px = (wo * sw - pw + j * dw).to(tl.float32) + dx
    valid = pix_ok & (py > -1.0) & (py < H) & (px > -1.0) & (px < W)  # NaN fails each
    py = tl.where(valid, py, 0.0)
    px = tl.where(valid, px, 0.0)
    fy = tl.floor(py)
    fx = tl.floor(px)
    if HAS_MASK:
        mbase = n * sm_n + ho * sm_h + wo * sm_w + (o * (KH * KW) + tap) * sm_c
        mval = tl.load(msk_ptr + mbase, mask=valid, other=0.0).to(tl.float32)
    else:
        mval = tl.where(valid, 1.0, 0.0)
    return fy.to(tl.int64), fx.to(tl.int64), py - fy, px - fx, mval, valid


@triton.jit
def _corner(x_ptr, n, yc, xc, valid, ci, c_ok, H, W, C):
    """Values [BLOCK_M, BLOCK_K] (float32) of corner (yc, xc) at channels ci of NHWC x; 0 outside."""
    inside = valid & (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
    pix = ((n * H + yc) * W + xc) * C
    ptrs = x_ptr + pix[:, None] + ci[None, :]
    return tl.load(ptrs, mask=inside[:, None] & c_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _scatter(gx_ptr, n, yc, xc, valid, ci, c_ok, H, W, C, value):
    """gx[n, yc, xc, ci] += value (float32 atomics) where the corner is inside the image."""
    inside = valid & (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
    ptrs = gx_ptr + (((n * H + yc) * W + xc) * C)[:, None] + ci[None, :]
    tl.atomic_add(ptrs, value, mask=inside[:, None] & c_ok[None, :], sem="relaxed")


@triton.jit
def _sample_tile(
    x_ptr,
    off_ptr,
    msk_ptr,
    n,
    ho,
    wo,
    pix_ok,
    tap,
    ci,
    c_ok,
    c_first,
    c_last,
    Cpog,
    C,
    H,
    W,
    KH: tl.constexpr,
    KW: tl.constexpr,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    so_n,
    so_c,
    so_h,
    so_w,
    sm_n,
    sm_c,
    sm_h,
    sm_w,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The A tile [BLOCK_M, BLOCK_K] (float32) of tap ``tap`` at input channels ``ci``:
    mask * bilinear sample, summed over the offset groups of channels c_first..c_last."""
    a = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for o in range(c_first // Cpog, c_last // Cpog + 1):
        y0, x0, ly, lx, mval, valid = _cell(
            off_ptr, msk_ptr, n, ho, wo, pix_ok, o, tap, KH, KW, H, W, sh, sw, ph, pw, dh, dw,
            so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK,
        )  # fmt: skip
        seg = c_ok & (ci >= o * Cpog) & (ci < (o + 1) * Cpog)
        hy = 1.0 - ly
        hx = 1.0 - lx
        a += (mval * hy * hx)[:, None] * _corner(x_ptr, n, y0, x0, valid, ci, seg, H, W, C)
        a += (mval * hy * lx)[:, None] * _corner(x_ptr, n, y0, x0 + 1, valid, ci, seg, H, W, C)
        a += (mval * ly * hx)[:, None] * _corner(x_ptr, n, y0 + 1, x0, valid, ci, seg, H, W, C)
        a += (mval * ly * lx)[:, None] * _corner(x_ptr, n, y0 + 1, x0 + 1, valid, ci, seg, H, W, C)
    return a


@triton.jit
def fused_forward_kernel(
    x_ptr, off_ptr, msk_ptr, w_ptr, b_ptr, out_ptr,
    M, C, H, W, Ho, Wo, Cg, Cog, Cpog,
    sh, sw, ph, pw, dh, dw,
    so_n, so_c, so_h, so_w,
    sm_n, sm_c, sm_h, sm_w,
    sy_n, sy_c, sy_h, sy_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out[n, g*Cog + co, ho, wo] = bias + sum over (tap, channel) of A * W, one
    [BLOCK_M pixels, BLOCK_N output channels] tile of weight group g per program.

    Grid: (cdiv(M, BLOCK_M), cdiv(Cog, BLOCK_N), groups)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    n, ho, wo, pix_ok = _pixels(pid_m, M, Ho, Wo, BLOCK_M)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Cog
    w_group = w_ptr + g * (KH * KW) * Cg * Cog
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, KH * KW):
        for c0 in range(0, Cg, BLOCK_K):
            cl = c0 + tl.arange(0, BLOCK_K)
            c_ok = cl < Cg
            ci = g * Cg + cl
            c_first = g * Cg + c0
            c_last = g * Cg + tl.minimum(c0 + BLOCK_K, Cg) - 1
            a = _sample_tile(
                x_ptr, off_ptr, msk_ptr, n, ho, wo, pix_ok, tap, ci, c_ok, c_first, c_last,
                Cpog, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw,
                so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK, BLOCK_M, BLOCK_K,
            )  # fmt: skip
            k = tap * Cg + cl
            b = tl.load(
                w_group + k[:, None] * Cog + co[None, :],
                mask=c_ok[:, None] & co_ok[None, :],
                other=0.0,
            )
            acc = tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + g * Cog + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    y = n * sy_n + ho * sy_h + wo * sy_w
    ptrs = out_ptr + y[:, None] + (g * Cog + co)[None, :] * sy_c
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=pix_ok[:, None] & co_ok[None, :])


@triton.jit
def fused_backward_data_kernel(
    x_ptr, off_ptr, msk_ptr, w_ptr, go_ptr, gx_ptr, goff_ptr, gmsk_ptr,
    M, C, H, W, Ho, Wo, Cg, Cog, Cpog,
    sh, sw, ph, pw, dh, dw,
    so_n, so_c, so_h, so_w,
    sm_n, sm_c, sm_h, sm_w,
    sg_n, sg_c, sg_h, sg_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """grad_input (float32 atomics into NHWC gx), grad_offset and grad_mask (each owned by one
    program: written once, deterministic) for a tile of BLOCK_M pixels and offset group o.

    grad_columns[p, (tap, c)] = sum_co grad_out[p, co] * W[co, c, tap] is a tensor-core GEMM
    over the weight groups that share o's channels, kept in float32. Then, per sample,
    grad_mask = sum_c gc * sample, grad_offset = sum_c gc * mask * d sample / d(y, x), and
    gc * mask * corner weight goes to each of the 4 corners of grad_input.
    goff / gmsk are contiguous like offset / mask. Grid: (cdiv(M, BLOCK_M), offset_groups)."""
    pid_m = tl.program_id(0)
    o = tl.program_id(1).to(tl.int64)
    n, ho, wo, pix_ok = _pixels(pid_m, M, Ho, Wo, BLOCK_M)
    c_lo = o * Cpog
    c_hi = c_lo + Cpog
    ho_wo = Ho * Wo
    pix = ho * Wo + wo
    for tap in range(0, KH * KW):
        y0, x0, ly, lx, mval, valid = _cell(
            off_ptr, msk_ptr, n, ho, wo, pix_ok, o, tap, KH, KW, H, W, sh, sw, ph, pw, dh, dw,
            so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK,
        )  # fmt: skip
        hy = 1.0 - ly
        hx = 1.0 - lx
        g_dy = tl.zeros((BLOCK_M,), dtype=tl.float32)
        g_dx = tl.zeros((BLOCK_M,), dtype=tl.float32)
        g_m = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for g in range(c_lo // Cg, (c_hi - 1) // Cg + 1):
            seg_lo = tl.maximum(c_lo, g * Cg)
            seg_hi = tl.minimum(c_hi, (g + 1) * Cg)
            w_group = w_ptr + g * (KH * KW) * Cg * Cog
            for c0 in range(seg_lo, seg_hi, BLOCK_K):
                ci = c0 + tl.arange(0, BLOCK_K)
                c_ok = ci < seg_hi
                k = tap * Cg + (ci - g * Cg)
                gc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
                for co0 in range(0, Cog, BLOCK_N):
                    co = co0 + tl.arange(0, BLOCK_N)
                    co_ok = co < Cog
                    gop = go_ptr + (n * sg_n + ho * sg_h + wo * sg_w)[:, None]
                    gop += (g * Cog + co)[None, :] * sg_c
                    gy = tl.load(gop, mask=pix_ok[:, None] & co_ok[None, :], other=0.0)
                    wt = tl.load(
                        w_group + k[None, :] * Cog + co[:, None],
                        mask=c_ok[None, :] & co_ok[:, None],
                        other=0.0,
                    )
                    gc = tl.dot(gy, wt, gc, input_precision=PRECISION)
                v00 = _corner(x_ptr, n, y0, x0, valid, ci, c_ok, H, W, C)
                v01 = _corner(x_ptr, n, y0, x0 + 1, valid, ci, c_ok, H, W, C)
                v10 = _corner(x_ptr, n, y0 + 1, x0, valid, ci, c_ok, H, W, C)
                v11 = _corner(x_ptr, n, y0 + 1, x0 + 1, valid, ci, c_ok, H, W, C)
                sample = (hy * hx)[:, None] * v00 + (hy * lx)[:, None] * v01
                sample += (ly * hx)[:, None] * v10 + (ly * lx)[:, None] * v11
                g_m += tl.sum(gc * sample, axis=1)
                d_dy = hx[:, None] * (v10 - v00) + lx[:, None] * (v11 - v01)
                d_dx = hy[:, None] * (v01 - v00) + ly[:, None] * (v11 - v10)
                g_dy += tl.sum(gc * d_dy, axis=1)
                g_dx += tl.sum(gc * d_dx, axis=1)
                # Scatter gc * mask * corner weight to the 4 corners (0 where a corner is outside).
                gcm = gc * mval[:, None]
                _scatter(gx_ptr, n, y0, x0, valid, ci, c_ok, H, W, C, gcm * (hy * hx)[:, None])
                _scatter(gx_ptr, n, y0, x0 + 1, valid, ci, c_ok, H, W, C, gcm * (hy * lx)[:, None])
                _scatter(gx_ptr, n, y0 + 1, x0, valid, ci, c_ok, H, W, C, gcm * (ly * hx)[:, None])
                _scatter(
                    gx_ptr, n, y0 + 1, x0 + 1, valid, ci, c_ok, H, W, C, gcm * (ly * lx)[:, None]
                )
        # grad_offset / grad_mask are contiguous: [N, 2*OG*kh*kw, Ho, Wo] and [N, OG*kh*kw, Ho, Wo].
        ch = o * (KH * KW) + tap
        n_ch = (C // Cpog) * (KH * KW)
        g_dy = tl.where(valid, g_dy * mval, 0.0)
        g_dx = tl.where(valid, g_dx * mval, 0.0)
        dst = goff_ptr + (n * (2 * n_ch) + 2 * ch) * ho_wo + pix
        tl.store(dst, g_dy.to(goff_ptr.dtype.element_ty), mask=pix_ok)
        tl.store(dst + ho_wo, g_dx.to(goff_ptr.dtype.element_ty), mask=pix_ok)
        if HAS_MASK:
            g_m = tl.where(valid, g_m, 0.0)
            dst = gmsk_ptr + (n * n_ch + ch) * ho_wo + pix
            tl.store(dst, g_m.to(gmsk_ptr.dtype.element_ty), mask=pix_ok)


@triton.jit
def fused_backward_weight_kernel(
    x_ptr, off_ptr, msk_ptr, go_ptr, part_ptr,
    M, C, H, W, Ho, Wo, Cg, Cog, Cpog,
    sh, sw, ph, pw, dh, dw,
    so_n, so_c, so_h, so_w,
    sm_n, sm_c, sm_h, sm_w,
    sg_n, sg_c, sg_h, sg_w,
    groups, splits, tiles_per_split,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Partial grad_weight of one pixel split: part[s, g, tap*Cg + c, co] = sum over the split's
    pixels p of grad_out[p, g*Cog + co] * A[p, (tap, c)], A re-sampled as in the forward, float32.
    The caller sums the splits in order (deterministic). part is contiguous
    [splits, groups, kh*kw*Cg, Cog]. Grid: (cdiv(Cog, BLOCK_N), kh*kw*cdiv(Cg, BLOCK_K),
    groups*splits)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_gs = tl.program_id(2)
    g = (pid_gs // splits).to(tl.int64)
    s = pid_gs % splits
    k_blocks = tl.cdiv(Cg, BLOCK_K)
    tap = pid_k // k_blocks
    c0 = (pid_k % k_blocks) * BLOCK_K
    cl = c0 + tl.arange(0, BLOCK_K)
    c_ok = cl < Cg
    ci = g * Cg + cl
    c_first = g * Cg + c0
    c_last = g * Cg + tl.minimum(c0 + BLOCK_K, Cg) - 1
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Cog
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    t_lo = s * tiles_per_split
    t_hi = tl.minimum(t_lo + tiles_per_split, tl.cdiv(M, BLOCK_M))
    for t in range(t_lo, t_hi):
        n, ho, wo, pix_ok = _pixels(t, M, Ho, Wo, BLOCK_M)
        a = _sample_tile(
            x_ptr, off_ptr, msk_ptr, n, ho, wo, pix_ok, tap, ci, c_ok, c_first, c_last,
            Cpog, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw,
            so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK, BLOCK_M, BLOCK_K,
        )  # fmt: skip
        gop = go_ptr + (n * sg_n + ho * sg_h + wo * sg_w)[:, None] + (g * Cog + co)[None, :] * sg_c
        gy = tl.load(gop, mask=pix_ok[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(gy), a.to(gy.dtype), acc, input_precision=PRECISION)
    k = tap * Cg + cl
    row = (s.to(tl.int64) * groups + g) * (KH * KW) * Cg
    dst = part_ptr + (row + k)[None, :] * Cog + co[:, None]
    tl.store(dst, acc, mask=co_ok[:, None] & c_ok[None, :])


# Whether Triton defined these kernels for its CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = not isinstance(fused_forward_kernel, triton.runtime.JITFunction)
