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
before that test), each corner outside the image reads 0. Index math is int64 when a tensor of
the call can pass 2**31 elements (IDX64), else int32 (fewer registers).
"""

import triton
import triton.language as tl


@triton.jit
def _pixels(pid_m, M, Ho, Wo, BLOCK_M: tl.constexpr, IDX64: tl.constexpr):
    """Rows pid_m*BLOCK_M + [0, BLOCK_M) of M as (n, ho, wo), and the row mask; int64 when
    IDX64 (every index derived from these then is int64), else int32."""
    if IDX64:  # (pid_m is a tensor or, in a loop under the interpreter, a Python int)
        m = (tl.zeros((BLOCK_M,), dtype=tl.int64) + pid_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = m < M
    m = tl.where(valid, m, 0)
    hw = Ho * Wo
    n = m // hw
    r = m - n * hw
    ho = r // Wo
    wo = r - ho * Wo
    return n, ho, wo, valid


@triton.jit
def _tap_pointers(
    off_ptr, msk_ptr, n, ho, wo, o, tap, KH: tl.constexpr, KW: tl.constexpr,
    so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
):  # fmt: skip
    """Pointers [BLOCK_M] to the (dy, dx) offset and the mask value of tap ``tap`` in offset
    group ``o`` for each pixel (the mask's only meaningful with a mask).

    The input side loads through them in its body, rather than a helper loading and returning
    values: torch.compile's check of which tensors a kernel writes follows a helper's results
    back to every argument of the call, so a scatter address computed from an offset loaded in
    a helper would mark offset and mask as written (then compiling the backward fails). Kernels
    whose write addresses do not depend on the offsets use _tap_sample."""
    ch = 2 * (o * (KH * KW) + tap)
    base = n * so_n + ho * so_h + wo * so_w
    dy_ptrs = off_ptr + base + ch * so_c
    m_ptrs = msk_ptr + n * sm_n + ho * sm_h + wo * sm_w + (o * (KH * KW) + tap) * sm_c
    return dy_ptrs, dy_ptrs + so_c, m_ptrs


@triton.jit
def _cell(
    dy, dx, ho, wo, pix_ok, tap, KW: tl.constexpr, H, W, sh, sw, ph, pw, dh, dw,
    IDX64: tl.constexpr,
):  # fmt: skip
    """The bilinear cell of tap ``tap`` for each pixel (vectors [BLOCK_M]) at offsets (dy, dx)
    (float32, loaded through _tap_pointers).

    Returns (y0, x0, ly, lx, valid): the top-left corner (int64 if IDX64, only meaningful where
    valid), the fraction inside the cell and whether the sample is defined (in range and
    finite). Where not valid the position is replaced by 0 before the floor.
    """
    i = tap // KW
    j = tap - i * KW
    py = (ho * sh - ph + i * dh).to(tl.float32) + dy
    px = (wo * sw - pw + j * dw).to(tl.float32) + dx
    valid = pix_ok & (py > -1.0) & (py < H) & (px > -1.0) & (px < W)  # NaN fails each
    py = tl.where(valid, py, 0.0)
    px = tl.where(valid, px, 0.0)
    fy = tl.floor(py)
    fx = tl.floor(px)
    if IDX64:  # (one return statement: its types must not depend on the branch)
        y0 = fy.to(tl.int64)
        x0 = fx.to(tl.int64)
    else:
        y0 = fy.to(tl.int32)
        x0 = fx.to(tl.int32)
    return y0, x0, py - fy, px - fx, valid


@triton.jit
def _modulation(m_ptrs, valid, HAS_MASK: tl.constexpr):
    """The mask value [BLOCK_M] (float32) through _tap_pointers' pointers, or 1 without a
    mask; 0 where the sample is not valid."""
    if HAS_MASK:
        mval = tl.load(m_ptrs, mask=valid, other=0.0).to(tl.float32)
    else:
        mval = tl.where(valid, 1.0, 0.0)
    return mval


@triton.jit
def _tap_corners(n, y0, x0, ly, lx, mval, valid, H, W, C):
    """The four corners of each pixel's sample (vectors [BLOCK_M], from _cell and _modulation):
    the element offset of corner (y0, x0) in NHWC x at channel 0, whether each corner
    (00, 01, 10, 11: row, column) is inside the image (never where the sample is not valid), and
    each corner's weight mask * bilinear weight."""
    hy = 1.0 - ly
    hx = 1.0 - lx
    top = valid & (y0 >= 0) & (y0 < H)
    bottom = valid & (y0 + 1 >= 0) & (y0 + 1 < H)
    left = (x0 >= 0) & (x0 < W)
    right = (x0 + 1 >= 0) & (x0 + 1 < W)
    p00 = ((n * H + y0) * W + x0) * C
    return (
        p00,
        top & left,
        top & right,
        bottom & left,
        bottom & right,
        mval * hy * hx,
        mval * hy * lx,
        mval * ly * hx,
        mval * ly * lx,
    )


@triton.jit
def _gather(x_ptr, p00, in00, in01, in10, in11, w00, w01, w10, w11, ci, seg, W, C):
    """The A tile [BLOCK_M, BLOCK_K] (float32): sum over the four corners (from _tap_corners) of
    weight * x at channels ``ci`` where ``seg``; corners outside the image read nothing."""
    cols = ci[None, :]
    segs = seg[None, :]
    p01 = p00 + C
    p10 = p00 + W * C
    p11 = p10 + C
    a = w00[:, None] * tl.load(
        x_ptr + p00[:, None] + cols, mask=in00[:, None] & segs, other=0.0
    ).to(tl.float32)
    a += w01[:, None] * tl.load(
        x_ptr + p01[:, None] + cols, mask=in01[:, None] & segs, other=0.0
    ).to(tl.float32)
    a += w10[:, None] * tl.load(
        x_ptr + p10[:, None] + cols, mask=in10[:, None] & segs, other=0.0
    ).to(tl.float32)
    a += w11[:, None] * tl.load(
        x_ptr + p11[:, None] + cols, mask=in11[:, None] & segs, other=0.0
    ).to(tl.float32)
    return a


@triton.jit
def _fixed_point_add(gx_ptr, gxi_ptr, offs, ok, term, fx_scale):
    """Deterministic grad_input adds: each finite term, times fx_scale, truncated to int64 and
    added to gxi (integer adds give the same sum in any order; fx_scale keeps every sum far
    from overflow, see fixed_point.fixed_point_scale); each non-finite term (inf, NaN) added to the
    float32 gx instead, whose sum of only non-finite values does not depend on the order
    either (inf, -inf, or NaN by which kinds occur)."""
    finite = tl.abs(term) < float("inf")  # NaN fails
    q = (tl.where(finite, term, 0.0) * fx_scale).to(tl.int64)
    tl.atomic_add(gxi_ptr + offs, q, mask=ok, sem="relaxed")
    if tl.max(tl.where(ok & ~finite, 1, 0)) > 0:
        tl.atomic_add(gx_ptr + offs, term, mask=ok & ~finite, sem="relaxed")


@triton.jit
def _corner_step(
    x_ptr, gx_ptr, gxi_ptr, fx_scale, n_h, yc, xc, ci, c_ok, H, W, C, gc, scale,
    SCATTER: tl.constexpr, REDUCE: tl.constexpr, FIXED: tl.constexpr,
):  # fmt: skip
    """One corner (yc, xc) of image n (n_h = n*H) in the backward, where the corner is inside
    the image (nothing elsewhere): with SCATTER, gx[n, yc, xc, ci] += gc * scale (float32
    atomics; with FIXED, see _fixed_point_add); with REDUCE, returns the row sums of
    gc * x[n, yc, xc, ci] [BLOCK_M] (else 0)."""
    inside = (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
    offs = (((n_h + yc) * W + xc) * C)[:, None] + ci[None, :]
    ok = inside[:, None] & c_ok[None, :]
    if SCATTER:
        if FIXED:
            _fixed_point_add(gx_ptr, gxi_ptr, offs, ok, gc * scale[:, None], fx_scale)
        else:
            tl.atomic_add(gx_ptr + offs, gc * scale[:, None], mask=ok, sem="relaxed")
    if REDUCE:
        v = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        t = tl.sum(gc * v, axis=1)
    else:
        t = tl.zeros_like(scale)
    return t


@triton.jit
def _tap_sample(
    off_ptr, msk_ptr, n, ho, wo, pix_ok, o, tap, C, H, W,
    KH: tl.constexpr, KW: tl.constexpr, sh, sw, ph, pw, dh, dw,
    so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
    HAS_MASK: tl.constexpr, IDX64: tl.constexpr,
):  # fmt: skip
    """_tap_corners of tap ``tap`` in offset group ``o``, the offsets and mask loaded here.
    Only for kernels whose writes do not take their addresses from the offsets (forward,
    weight side); the input side loads them in its body (see _tap_pointers)."""
    dy_ptrs, dx_ptrs, m_ptrs = _tap_pointers(
        off_ptr, msk_ptr, n, ho, wo, o, tap, KH, KW,
        so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
    )  # fmt: skip
    dy = tl.load(dy_ptrs, mask=pix_ok, other=0.0).to(tl.float32)
    dx = tl.load(dx_ptrs, mask=pix_ok, other=0.0).to(tl.float32)
    y0, x0, ly, lx, valid = _cell(
        dy, dx, ho, wo, pix_ok, tap, KW, H, W, sh, sw, ph, pw, dh, dw, IDX64
    )
    mval = _modulation(m_ptrs, valid, HAS_MASK)
    return _tap_corners(n, y0, x0, ly, lx, mval, valid, H, W, C)


@triton.jit
def _group_tile(
    x_ptr, off_ptr, msk_ptr, n, ho, wo, pix_ok, o, tap, ci, seg, C, H, W,
    KH: tl.constexpr, KW: tl.constexpr, sh, sw, ph, pw, dh, dw,
    so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
    HAS_MASK: tl.constexpr, IDX64: tl.constexpr,
):  # fmt: skip
    """mask * bilinear sample [BLOCK_M, BLOCK_K] of tap ``tap`` in offset group ``o`` at the
    channels ``ci`` where ``seg`` (0 elsewhere)."""
    p00, in00, in01, in10, in11, w00, w01, w10, w11 = _tap_sample(
        off_ptr, msk_ptr, n, ho, wo, pix_ok, o, tap, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw,
        so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK, IDX64,
    )  # fmt: skip
    return _gather(x_ptr, p00, in00, in01, in10, in11, w00, w01, w10, w11, ci, seg, W, C)


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
    IDX64: tl.constexpr,
    ONE_OG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The A tile [BLOCK_M, BLOCK_K] (float32) of tap ``tap`` at input channels ``ci``:
    mask * bilinear sample, summed over the offset groups of channels c_first..c_last
    (ONE_OG: the caller knows they share one offset group, so no loop)."""
    if ONE_OG:
        a = _group_tile(
            x_ptr, off_ptr, msk_ptr, n, ho, wo, pix_ok, c_first // Cpog, tap, ci, c_ok, C, H, W,
            KH, KW, sh, sw, ph, pw, dh, dw, so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
            HAS_MASK, IDX64,
        )  # fmt: skip
    else:
        a = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for o in range(c_first // Cpog, c_last // Cpog + 1):
            seg = c_ok & (ci >= o * Cpog) & (ci < (o + 1) * Cpog)
            a += _group_tile(
                x_ptr, off_ptr, msk_ptr, n, ho, wo, pix_ok, o, tap, ci, seg, C, H, W,
                KH, KW, sh, sw, ph, pw, dh, dw, so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
                HAS_MASK, IDX64,
            )  # fmt: skip
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
    IDX64: tl.constexpr,
    ONE_OG: tl.constexpr,
    GROUP_ONE_OG: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out[n, g*Cog + co, ho, wo] = bias + sum over (tap, channel) of A * W, one
    [BLOCK_M pixels, BLOCK_N output channels] tile of weight group g per program.

    GROUP_ONE_OG: every weight group lies in one offset group (one offset group, or C_in /
    offset_groups a multiple of C_in / groups); then each tap's offsets, cell and corner
    weights are computed once and serve all of the group's channel blocks.
    Grid: (cdiv(M, BLOCK_M), cdiv(Cog, BLOCK_N), groups)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    if IDX64:
        g = g.to(tl.int64)
    n, ho, wo, pix_ok = _pixels(pid_m, M, Ho, Wo, BLOCK_M, IDX64)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Cog
    w_group = w_ptr + g * (KH * KW) * Cg * Cog
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, KH * KW):
        # The tap's corners in the group's (first) offset group; only GROUP_ONE_OG uses them
        # (the compiler drops them otherwise).
        p00, in00, in01, in10, in11, w00, w01, w10, w11 = _tap_sample(
            off_ptr, msk_ptr, n, ho, wo, pix_ok, (g * Cg) // Cpog, tap, C, H, W, KH, KW,
            sh, sw, ph, pw, dh, dw, so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK, IDX64,
        )  # fmt: skip
        for c0 in range(0, Cg, BLOCK_K):
            cl = c0 + tl.arange(0, BLOCK_K)
            c_ok = cl < Cg
            ci = g * Cg + cl
            if GROUP_ONE_OG:
                a = _gather(x_ptr, p00, in00, in01, in10, in11, w00, w01, w10, w11, ci, c_ok, W, C)
            else:
                c_first = g * Cg + c0
                c_last = g * Cg + tl.minimum(c0 + BLOCK_K, Cg) - 1
                a = _sample_tile(
                    x_ptr, off_ptr, msk_ptr, n, ho, wo, pix_ok, tap, ci, c_ok, c_first, c_last,
                    Cpog, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw,
                    so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK, IDX64, ONE_OG, BLOCK_M, BLOCK_K,
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
    x_ptr, off_ptr, msk_ptr, w_ptr, go_ptr, gx_ptr, gxi_ptr, scale_ptr, goff_ptr, gmsk_ptr,
    M, C, H, W, Ho, Wo, Cg, Cog, Cpog,
    sh, sw, ph, pw, dh, dw,
    so_n, so_c, so_h, so_w,
    sm_n, sm_c, sm_h, sm_w,
    sg_n, sg_c, sg_h, sg_w,
    split_c, goff_split, gmsk_split,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IDX64: tl.constexpr,
    PRECISION: tl.constexpr,
    SCATTER: tl.constexpr,
    REDUCE: tl.constexpr,
    FIXED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """grad_input (float32 atomics into NHWC gx; SCATTER), grad_offset and grad_mask (written
    once by their program, deterministic; REDUCE) for a tile of BLOCK_M pixels, offset group o
    and split s of o's channels (``split_c`` channels each: the splits give small grids more
    programs). One launch with both, or two launches with one each (fewer live registers per
    launch; grad_columns is computed in each). FIXED (deterministic mode): grad_input's finite
    terms go to the int64 gxi in fixed point (scale at scale_ptr), the others to gx.

    grad_columns[p, (tap, c)] = sum_co grad_out[p, co] * W[co, c, tap] is a tensor-core GEMM
    over the weight groups that share the split's channels, kept in float32. Then, per sample,
    grad_mask = sum_c gc * sample, grad_offset = sum_c gc * mask * d sample / d(y, x), and
    gc * mask * corner weight goes to each of the 4 corners of grad_input.
    goff / gmsk are contiguous like offset / mask, one per split (split s at element
    s * goff_split / s * gmsk_split; the caller adds the splits up in order).
    Grid: (cdiv(M, BLOCK_M), offset_groups, splits)."""
    pid_m = tl.program_id(0)
    o = tl.program_id(1)
    s = tl.program_id(2)
    if IDX64:
        o = o.to(tl.int64)
        s = s.to(tl.int64)
    n, ho, wo, pix_ok = _pixels(pid_m, M, Ho, Wo, BLOCK_M, IDX64)
    c_lo = o * Cpog + s * split_c
    c_hi = tl.minimum(c_lo + split_c, (o + 1) * Cpog)
    # Few per-pixel vectors stay live through the loops (registers): grad_out's row offsets
    # (pixels past M are pixel 0 (_pixels): read, never used; no tl.where here, which would
    # hide the rows' alignment from the compiler and make the loads scalar), the image's
    # first row n*H, and per tap the cell, where an undefined sample (or a pixel past M) gets
    # the corner row -2: all its corners are outside, so it reads and scatters nothing.
    go_row = n * sg_n + ho * sg_h + wo * sg_w
    n_h = n * H
    fx_scale = tl.load(scale_ptr) if FIXED else 0.0
    for tap in range(0, KH * KW):
        # The offsets are loaded here, in the kernel's body (see _tap_pointers).
        dy_ptrs, dx_ptrs, m_ptrs = _tap_pointers(
            off_ptr, msk_ptr, n, ho, wo, o, tap, KH, KW,
            so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
        )  # fmt: skip
        dy = tl.load(dy_ptrs, mask=pix_ok, other=0.0).to(tl.float32)
        dx = tl.load(dx_ptrs, mask=pix_ok, other=0.0).to(tl.float32)
        y0, x0, ly, lx, valid = _cell(
            dy, dx, ho, wo, pix_ok, tap, KW, H, W, sh, sw, ph, pw, dh, dw, IDX64
        )
        mval = _modulation(m_ptrs, valid, HAS_MASK)
        y0 = tl.where(valid, y0, -2)
        # Per corner, t = sum over the offset group's channels of grad_columns * corner value;
        # the cell's weights are per pixel, so grad_mask and grad_offset follow from the four t.
        t00 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        t01 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        t10 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        t11 = tl.zeros((BLOCK_M,), dtype=tl.float32)
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
                    gop = go_ptr + go_row[:, None] + (g * Cog + co)[None, :] * sg_c
                    gy = tl.load(gop, mask=co_ok[None, :], other=0.0)
                    wt = tl.load(
                        w_group + k[None, :] * Cog + co[:, None],
                        mask=c_ok[None, :] & co_ok[:, None],
                        other=0.0,
                    )
                    gc = tl.dot(gy, wt, gc, input_precision=PRECISION)
                # grad_input: gc * mask * corner weight to each corner (none where outside).
                hy = 1.0 - ly
                hx = 1.0 - lx
                t00 += _corner_step(
                    x_ptr, gx_ptr, gxi_ptr, fx_scale, n_h, y0, x0, ci, c_ok, H, W, C,
                    gc, mval * hy * hx, SCATTER, REDUCE, FIXED,
                )  # fmt: skip
                t01 += _corner_step(
                    x_ptr, gx_ptr, gxi_ptr, fx_scale, n_h, y0, x0 + 1, ci, c_ok, H, W, C,
                    gc, mval * hy * lx, SCATTER, REDUCE, FIXED,
                )  # fmt: skip
                t10 += _corner_step(
                    x_ptr, gx_ptr, gxi_ptr, fx_scale, n_h, y0 + 1, x0, ci, c_ok, H, W, C,
                    gc, mval * ly * hx, SCATTER, REDUCE, FIXED,
                )  # fmt: skip
                t11 += _corner_step(
                    x_ptr, gx_ptr, gxi_ptr, fx_scale, n_h, y0 + 1, x0 + 1, ci, c_ok, H, W, C,
                    gc, mval * ly * lx, SCATTER, REDUCE, FIXED,
                )  # fmt: skip
        if REDUCE:
            _store_offset_mask_grads(
                goff_ptr, gmsk_ptr, s, goff_split, gmsk_split, n, ho, wo, pix_ok, o, tap,
                C, Cpog, Ho, Wo, KH, KW, y0 > -2, ly, lx, mval, t00, t01, t10, t11, HAS_MASK,
            )  # fmt: skip


@triton.jit
def _store_offset_mask_grads(
    goff_ptr, gmsk_ptr, s, goff_split, gmsk_split, n, ho, wo, pix_ok, o, tap,
    C, Cpog, Ho, Wo, KH: tl.constexpr, KW: tl.constexpr, defined, ly, lx, mval,
    t00, t01, t10, t11, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """grad_mask = sum of the corner weights * t and grad_offset = mask * d(weights)/d(y, x) * t
    of tap ``tap`` in offset group ``o`` (0 where the sample is not ``defined``), stored to
    split ``s`` of goff / gmsk (contiguous like offset / mask)."""
    hy = 1.0 - ly
    hx = 1.0 - lx
    g_m = tl.where(defined, hy * hx * t00 + hy * lx * t01 + ly * hx * t10 + ly * lx * t11, 0.0)
    g_dy = tl.where(defined, mval * (hx * (t10 - t00) + lx * (t11 - t01)), 0.0)
    g_dx = tl.where(defined, mval * (hy * (t01 - t00) + ly * (t11 - t10)), 0.0)
    # grad_offset / grad_mask are contiguous: [N, 2*OG*kh*kw, Ho, Wo] and [N, OG*kh*kw, Ho, Wo];
    # pixel m = n*Ho*Wo + pix lands at ((n*channels + channel)*Ho*Wo + pix).
    ch = o * (KH * KW) + tap
    n_ch = (C // Cpog) * (KH * KW)
    ho_wo = Ho * Wo
    dst = goff_ptr + s * goff_split + (n * (2 * n_ch) + 2 * ch) * ho_wo + (ho * Wo + wo)
    tl.store(dst, g_dy.to(goff_ptr.dtype.element_ty), mask=pix_ok)
    tl.store(dst + ho_wo, g_dx.to(goff_ptr.dtype.element_ty), mask=pix_ok)
    if HAS_MASK:
        dst = gmsk_ptr + s * gmsk_split + (n * n_ch + ch) * ho_wo + (ho * Wo + wo)
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
    IDX64: tl.constexpr,
    ONE_OG: tl.constexpr,
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
    g = pid_gs // splits
    if IDX64:
        g = g.to(tl.int64)
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
        n, ho, wo, pix_ok = _pixels(t, M, Ho, Wo, BLOCK_M, IDX64)
        a = _sample_tile(
            x_ptr, off_ptr, msk_ptr, n, ho, wo, pix_ok, tap, ci, c_ok, c_first, c_last,
            Cpog, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw,
            so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, HAS_MASK, IDX64, ONE_OG, BLOCK_M, BLOCK_K,
        )  # fmt: skip
        gop = go_ptr + (n * sg_n + ho * sg_h + wo * sg_w)[:, None] + (g * Cog + co)[None, :] * sg_c
        gy = tl.load(gop, mask=pix_ok[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(gy), a.to(gy.dtype), acc, input_precision=PRECISION)
    k = tap * Cg + cl
    row = (s * groups + g) * (KH * KW) * Cg  # partials: far below 2**31 elements
    dst = part_ptr + (row + k)[None, :] * Cog + co[:, None]
    tl.store(dst, acc, mask=co_ok[:, None] & c_ok[None, :])


# Whether Triton defined these kernels for its CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = not isinstance(fused_forward_kernel, triton.runtime.JITFunction)
