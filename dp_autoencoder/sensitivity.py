"""Proven sensitivity bounds for the pre-noise layer g of a PixelDP auto-encoder.

Every certificate divides by the sensitivity Delta = sup ||g(x) - g(x')|| / ||x - x'||, so Delta must be an
upper bound (soundness) and should be close to the truth (usefulness).  g is a 2-D convolution, possibly
followed by a ReLU.  A bias cancels in g(x) - g(x') and a ReLU is 1-Lipschitz, so Delta is bounded by the
operator norm of the bias-free linear map x -> conv2d(x, W).  That norm depends on the input's spatial size,
which is why every bound here takes ``input_size = (H, W)``.

Functions (numbers in, numbers out; weights are never modified except by the two ``*_`` functions):

- :func:`conv_l2_bound` -- sound and tight L2 -> L2 bound (polyphase + Fourier, Sedghi et al. 2019).
- :func:`conv_l2_bound_simple` -- the classic sqrt(ceil(kh/sh) ceil(kw/sw)) * sigma_max(W) bound (sound,
  often loose; for comparison).
- :func:`conv_l1_bound` -- the exact L1 -> L1 operator norm (largest column abs-sum).
- :func:`conv_power_iteration` -- a *lower* estimate of the L2 operator norm (for testing the bounds).
- :func:`conv_sensitivity`, :func:`project_conv_`, :func:`parseval_retraction_` -- helpers on
  ``torch.nn.Conv2d`` modules.

Everything is computed in float64; the rounding error of the L2 bound is a relative ~1e-13, far below any
statistical slack in the certificates.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "conv_l2_bound",
    "conv_l2_bound_simple",
    "conv_l1_bound",
    "conv_power_iteration",
    "conv_sensitivity",
    "project_conv_",
    "parseval_retraction_",
]

IntOrPair = Union[int, Sequence[int]]

# Largest number of complex entries of the transfer tensor held in memory at once (16 bytes each).
_CHUNK_ENTRIES = 1 << 23


# --------------------------------------------------------------------------------------------- helpers
def _pair(value: IntOrPair, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    else:
        try:
            pair = tuple(int(v) for v in value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(pair) != 2 or any(int(v) != v for v in value):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_weight(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 4-D tensor (out, in, kh, kw) as in torch.nn.Conv2d, got {shape}")
    if weight.is_complex():
        raise ValueError("weight must be real")
    if weight.numel() == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight.shape)}")
    return weight.detach().to(torch.float64)


def _geometry(weight: torch.Tensor, stride: IntOrPair, padding: IntOrPair, input_size: IntOrPair):
    """Validated (sh, sw), (ph, pw), (H, W), (Hout, Wout) of a conv2d on an H x W input."""
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    H, W = _pair(input_size, "input_size", 1)
    kh, kw = weight.shape[-2:]
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input {H + 2 * ph}x{W + 2 * pw} "
            f"(input_size={(H, W)}, padding={(ph, pw)}): the convolution has no output"
        )
    h_out = (H + 2 * ph - kh) // sh + 1
    w_out = (W + 2 * pw - kw) // sw + 1
    return (sh, sw), (ph, pw), (H, W), (h_out, w_out)


def _adjoint(y: torch.Tensor, weight: torch.Tensor, stride, padding, size) -> torch.Tensor:
    """A^T y for A = conv2d(., weight, stride, padding) on inputs of spatial size ``size``."""
    (sh, sw), (ph, pw), (H, W) = stride, padding, size
    kh, kw = weight.shape[-2:]
    h_out, w_out = y.shape[-2:]
    # conv_transpose2d's natural output size is (h_out-1)*s - 2p + k; the conv floors, so the true input can be
    # up to s-1 larger; output_padding (always in [0, s)) restores exactly (H, W).
    oph = H - ((h_out - 1) * sh - 2 * ph + kh)
    opw = W - ((w_out - 1) * sw - 2 * pw + kw)
    return F.conv_transpose2d(y, weight, stride=(sh, sw), padding=(ph, pw), output_padding=(oph, opw))


def _check_conv_module(conv: torch.nn.Module) -> None:
    if not isinstance(conv, torch.nn.Conv2d):
        raise ValueError(f"expected a torch.nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"only groups=1 convolutions are supported, got groups={conv.groups}")
    if tuple(conv.dilation) != (1, 1):
        raise ValueError(f"only dilation=1 convolutions are supported, got dilation={tuple(conv.dilation)}")
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"only padding_mode='zeros' is supported, got padding_mode={conv.padding_mode!r} "
            "(reflect/replicate/circular padding repeat input pixels and change the operator norm)"
        )
    if isinstance(conv.padding, str):
        raise ValueError(f"string padding {conv.padding!r} is not supported; give explicit integer padding")


# ------------------------------------------------------------------------------------------- L2 bounds
def _polyphase_kernel(weight: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """W'[o, (i, a, b), p, q] = W[o, i, sh*p + a, sw*q + b], the kernel first zero-padded to multiples of s."""
    O, I, kh, kw = weight.shape
    Kh, Kw = -(-kh // sh), -(-kw // sw)
    w = F.pad(weight, (0, Kw * sw - kw, 0, Kh * sh - kh))
    w = w.reshape(O, I, Kh, sh, Kw, sw).permute(0, 1, 3, 5, 2, 4)
    return w.reshape(O, I * sh * sw, Kh, Kw)


def _dft_matrix(n_taps: int, n: int, n_freq: int, device) -> torch.Tensor:
    """E[p, f] = exp(-2 pi i p f / n) for p < n_taps, f < n_freq; the phase p*f is reduced mod n exactly."""
    p = torch.arange(n_taps, device=device, dtype=torch.int64)[:, None]
    f = torch.arange(n_freq, device=device, dtype=torch.int64)[None, :]
    angle = (p * f % n).to(torch.float64) * (-2.0 * math.pi / n)
    return torch.polar(torch.ones_like(angle), angle)


def conv_l2_bound(
    weight: torch.Tensor, stride: IntOrPair, padding: IntOrPair, input_size: IntOrPair
) -> float:
    r"""Proven upper bound on the L2 -> L2 operator norm of ``conv2d(., weight, stride, padding)`` (no bias,
    zero padding, groups = dilation = 1) acting on inputs of spatial size ``input_size = (H, W)``.

    Proof sketch (A is the conv's matrix, ||.|| the spectral norm; every step is exact or norm-non-increasing):

    1. *Zero padding* x -> x_pad of size (H + 2ph) x (W + 2pw) is an isometric embedding E, and A = A_pad E
       where A_pad is the unpadded strided conv on arbitrary padded-size images; so ||A|| <= ||A_pad||.  Of the
       padded image only the first R_h = sh (Hout - 1) + kh rows (R_w columns) are ever read, so A_pad =
       A_read C with C a coordinate restriction (||C|| <= 1); extending the read window with zero rows up to
       multiples of the stride, (sh Nh) x (sw Nw) with Nh = ceil(R_h / sh), is again an isometric embedding.
    2. *Space-to-depth* by the stride, P[(i, a, b), r, c] = x[i, sh r + a, sw c + b], is a permutation of the
       coordinates (an isometry).  The stride-s conv becomes a stride-1 'valid' correlation of P with the
       polyphase kernel W'[o, (i, a, b), p, q] = W[o, i, sh p + a, sw q + b] (the kernel zero-padded to
       multiples of the stride), of size Kh x Kw = ceil(kh / sh) x ceil(kw / sw), whose Hout x Wout outputs
       are exactly the conv's outputs.  Note Nh = Hout + Kh - 1.
    3. *Torus.* On the Nh x Nw torus, the circular correlation C_circ y[o, m, n] = sum_{c,p,q}
       W'[o, c, p, q] P[c, (m + p) mod Nh, (n + q) mod Nw] agrees with the valid correlation at every valid
       output (m < Hout, p < Kh  =>  m + p <= Nh - 1: no index wraps).  The valid correlation is therefore
       a restriction of C_circ to its first Hout x Wout outputs, and ||valid|| <= ||C_circ||.
    4. *Block diagonalization* (Sedghi, Gupta, Long, ICLR 2019).  C_circ is block-circulant with O x C blocks
       (C = I sh sw); the unitary 2-D DFT (applied per channel on both sides) block-diagonalizes it:
       C_circ = (F* (x) I_O) diag_f(T(f)) (F (x) I_C), with transfer matrices
       T(f) = sum_{p,q} W'[:, :, p, q] exp(-2 pi i (p f_h / Nh + q f_w / Nw)).  (For a correlation the DFT
       of the output is sum_{p,q} W'[p,q] e^{+2 pi i (...)} times that of the input, i.e. T(-f); but f -> -f
       is a bijection of the frequency grid, so the set of transfer matrices -- hence the max -- does not
       depend on the sign convention.)  A unitary change of basis keeps the norm, and the norm of a block-
       diagonal matrix is the largest block norm: ||C_circ|| = max_f sigma_max(T(f)), over complex vectors;
       over real vectors it is the same, because the matrix of C_circ is real.

    So ||A|| <= max_f sigma_max(T(f)) = the returned value.  The weight is real, so T(-f) = conj(T(f)) has
    the same singular values and only the half-spectrum f_w in [0, Nw // 2] is evaluated.  The bound is
    homogeneous of degree 1 in the weight and never exceeds :func:`conv_l2_bound_simple`.

    Args:
        weight: (O, I, kh, kw) kernel as in ``torch.nn.Conv2d``.
        stride, padding: int or (h, w) pair, as in ``torch.nn.Conv2d`` (zero padding).
        input_size: int or (H, W), the spatial size of the conv's input.
    """
    w = _check_weight(weight)
    (sh, sw), _, _, (h_out, w_out) = _geometry(w, stride, padding, input_size)
    wp = _polyphase_kernel(w, sh, sw)
    O, C, Kh, Kw = wp.shape
    Nh, Nw = h_out + Kh - 1, w_out + Kw - 1  # the read window in polyphase coordinates (step 1 and 3)
    n_fw = Nw // 2 + 1
    dev = wp.device

    # DFT along the kernel's width first (only the half-spectrum), then along its height in chunks.
    a = torch.einsum("ocpq,qg->ocpg", wp.to(torch.complex128), _dft_matrix(Kw, Nw, n_fw, dev))
    e_h = _dft_matrix(Kh, Nh, Nh, dev)
    chunk = max(1, _CHUNK_ENTRIES // (O * C * n_fw))
    best = torch.zeros((), dtype=torch.float64, device=dev)
    for start in range(0, Nh, chunk):
        t = torch.einsum("ocpg,ph->hgoc", a, e_h[:, start : start + chunk])  # (h, g, O, C): T per frequency
        t = t.reshape(-1, O, C)
        best = torch.maximum(best, torch.linalg.svdvals(t)[:, 0].max())
    return float(best)


def conv_l2_bound_simple(weight: torch.Tensor, stride: IntOrPair) -> float:
    r"""The classic bound sqrt(ceil(kh/sh) ceil(kw/sw)) * sigma_max(W_mat), W_mat the O x (I kh kw) matrix.

    Sound for any input size and zero padding: every input pixel lies in at most ceil(kh/sh) ceil(kw/sw)
    patches, so ||conv x||^2 = sum_patches ||W_mat x_patch||^2 <= sigma^2 sum_patches ||x_patch||^2
    <= sigma^2 ceil(kh/sh) ceil(kw/sw) ||x||^2.  For a square kernel this is ceil(k/s) sigma_max (DESIGN.md).
    Never tighter than :func:`conv_l2_bound`; kept for comparison.
    """
    w = _check_weight(weight)
    sh, sw = _pair(stride, "stride", 1)
    kh, kw = w.shape[-2:]
    sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
    return float(math.sqrt(-(-kh // sh) * -(-kw // sw)) * sigma)


# ------------------------------------------------------------------------------------------- L1 bound
def conv_l1_bound(
    weight: torch.Tensor, stride: IntOrPair, padding: IntOrPair, input_size: IntOrPair
) -> float:
    r"""The exact L1 -> L1 operator norm of ``conv2d(., weight, stride, padding)`` on (H, W) inputs.

    The L1 operator norm of a matrix is its largest column abs-sum, attained by a one-hot input.  Column
    (i, u, v) of the conv's matrix holds W[o, i, u - s m + p, v - s n + p] over the outputs (o, m, n) that
    read pixel (u, v); its abs-sum is A_{|W|}^T 1 at (i, u, v), i.e. |W| transposed-convolved onto an
    all-ones output image.  Exact, hence sound and tight.
    """
    w = _check_weight(weight)
    s, p, size, (h_out, w_out) = _geometry(w, stride, padding, input_size)
    ones = torch.ones(1, w.shape[0], h_out, w_out, dtype=torch.float64, device=w.device)
    return float(_adjoint(ones, w.abs(), s, p, size).max())


# ------------------------------------------------------------------------------ power iteration (lower)
def conv_power_iteration(
    weight: torch.Tensor,
    stride: IntOrPair,
    padding: IntOrPair,
    input_size: IntOrPair,
    iters: int = 500,
    seed: int = 0,
) -> float:
    """A LOWER estimate of the L2 operator norm: power iteration on A^T A, returning ||A v|| for the final
    unit vector v (a value every true operator norm is >= to).  float64; deterministic given ``seed``."""
    w = _check_weight(weight)
    s, p, (H, W), _ = _geometry(w, stride, padding, input_size)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(1, w.shape[1], H, W, generator=gen, dtype=torch.float64).to(w.device)
    v = v / v.norm()
    for _ in range(max(0, int(iters))):
        u = _adjoint(F.conv2d(v, w, stride=s, padding=p), w, s, p, (H, W))
        norm = u.norm()
        if norm == 0:
            return 0.0
        v = u / norm
    return float(F.conv2d(v, w, stride=s, padding=p).norm())


# ---------------------------------------------------------------------------------- nn.Conv2d helpers
def conv_sensitivity(conv: torch.nn.Conv2d, input_size: IntOrPair, norm: str = "l2") -> float:
    """Proven sensitivity of ``x -> conv(x)`` (bias cancels; a following ReLU is 1-Lipschitz) on (H, W)
    inputs: :func:`conv_l2_bound` for ``norm='l2'``, the exact :func:`conv_l1_bound` for ``norm='l1'``."""
    _check_conv_module(conv)
    if norm == "l2":
        return conv_l2_bound(conv.weight, conv.stride, conv.padding, input_size)
    if norm == "l1":
        return conv_l1_bound(conv.weight, conv.stride, conv.padding, input_size)
    raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")


def project_conv_(
    conv: torch.nn.Conv2d, input_size: IntOrPair, norm: str = "l2", max_sensitivity: float = 1.0
) -> float:
    """In place: if the conv's sensitivity exceeds ``max_sensitivity``, scale its weight down so that it is
    (just) below it.  The bound is homogeneous of degree 1 in the weight; the factor is shrunk by 1e-6 so the
    recomputed bound is <= max_sensitivity despite rounding.  Returns the sensitivity after projection."""
    if not (isinstance(max_sensitivity, (int, float)) and math.isfinite(max_sensitivity) and max_sensitivity > 0):
        raise ValueError(f"max_sensitivity must be a finite positive number, got {max_sensitivity!r}")
    bound = conv_sensitivity(conv, input_size, norm)
    for _ in range(5):  # one pass in practice; the loop only guards against pathological rounding
        if bound <= max_sensitivity:
            return bound
        with torch.no_grad():
            conv.weight.mul_(max_sensitivity / bound * (1.0 - 1e-6))
        bound = conv_sensitivity(conv, input_size, norm)
    if bound > max_sensitivity:  # pragma: no cover - unreachable with finite weights
        raise RuntimeError(f"could not project the conv below {max_sensitivity} (bound {bound})")
    return bound


def parseval_retraction_(conv: torch.nn.Conv2d, beta: float = 0.05) -> None:
    """One Parseval retraction step (Cisse et al. 2017), in place: with W the O x (I kh kw) matrix,
    W <- (1 + beta) W - beta W W^T W.  Each singular value moves as s <- (1 + beta) s - beta s^3, toward 1
    (for s < sqrt((2 + beta) / beta)).  Note sigma_max(W) -> 1 only bounds the conv's L2 norm by the simple
    bound ceil(k/s)-type factor; use :func:`conv_sensitivity` for the certificate."""
    _check_conv_module(conv)
    if not (beta > 0):
        raise ValueError(f"beta must be positive, got {beta!r}")
    with torch.no_grad():
        w = conv.weight
        m = w.reshape(w.shape[0], -1).to(torch.float64)
        # W W^T W, associated so the inner product is the smaller Gram matrix.
        if m.shape[0] <= m.shape[1]:
            cubic = (m @ m.T) @ m
        else:
            cubic = m @ (m.T @ m)
        w.copy_(((1.0 + beta) * m - beta * cubic).reshape(w.shape).to(w.dtype))
