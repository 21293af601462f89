"""Tests of the proven conv sensitivity bounds (dp_autoencoder.sensitivity).

Soundness is checked three ways against independent quantities: the exact norm of the conv's dense matrix
(small sizes), power iteration (a lower estimate) and random input pairs.  Tightness is checked by power
iteration reaching >= 95% of the bound; the ratios are printed (run with -s to see them).
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dp_autoencoder.sensitivity import (
    conv_l1_bound,
    conv_l2_bound,
    conv_l2_bound_simple,
    conv_power_iteration,
    conv_sensitivity,
    parseval_retraction_,
    project_conv_,
)


def _dense_matrix(w, stride, padding, size):
    """The conv's matrix, (O*Hout*Wout) x (I*H*W), built column by column from one-hot inputs."""
    I = w.shape[1]
    H, W = size
    n = I * H * W
    basis = torch.eye(n, dtype=torch.float64).reshape(n, I, H, W)
    out = F.conv2d(basis, w, stride=stride, padding=padding)
    return out.reshape(n, -1).T


def _random_configs(n, seed):
    """Random (weight, stride, padding, size) covering k % s != 0, k < s, non-square everything."""
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < n:
        r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
        sh, sw = r(1, 3), r(1, 3)
        kh, kw = r(1, 5), r(1, 5)
        ph, pw = r(0, 2), r(0, 2)
        I, O = [1, 3][r(0, 1)], r(1, 6)
        H, W = r(3, 11), r(3, 11)
        if H + 2 * ph < kh or W + 2 * pw < kw:
            continue
        w = torch.randn(O, I, kh, kw, generator=g, dtype=torch.float64)
        if r(0, 3) == 0:
            w = w.abs()  # all-positive kernels peak at DC, a different regime
        out.append((w, (sh, sw), (ph, pw), (H, W)))
    return out


# ------------------------------------------------------------------------------------------ soundness
@pytest.mark.parametrize("cfg", _random_configs(60, seed=0))
def test_bounds_against_dense_matrix(cfg):
    w, s, p, size = cfg
    m = _dense_matrix(w, s, p, size)
    exact_l2 = float(torch.linalg.matrix_norm(m, ord=2))
    exact_l1 = float(m.abs().sum(0).max())
    bound = conv_l2_bound(w, s, p, size)
    simple = conv_l2_bound_simple(w, s)
    assert exact_l2 <= bound * (1 + 1e-9)
    assert bound <= simple * (1 + 1e-9)
    assert conv_l1_bound(w, s, p, size) == pytest.approx(exact_l1, rel=1e-12)
    lower = conv_power_iteration(w, s, p, size, iters=200)
    assert lower <= exact_l2 * (1 + 1e-9)


@pytest.mark.parametrize(
    "O,I,k,s,p,size",
    [
        (8, 3, 5, 2, 2, (33, 20)),  # odd / non-square input
        (6, 1, 3, 3, 0, (28, 28)),  # k == s
        (4, 3, 2, 3, 1, (17, 23)),  # k < s
        (5, 1, (4, 2), (2, 1), (1, 0), (19, 16)),  # non-square kernel and stride
        (16, 3, 7, 2, 3, (40, 31)),  # k not divisible by s
        (3, 1, 1, 1, 0, (9, 12)),
    ],
)
def test_soundness_power_iteration_and_random_pairs(O, I, k, s, p, size):
    k = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(O * 100 + I)
    w = torch.randn(O, I, *k, generator=g, dtype=torch.float64)
    b2 = conv_l2_bound(w, s, p, size)
    b1 = conv_l1_bound(w, s, p, size)
    assert conv_power_iteration(w, s, p, size, iters=300) <= b2 * (1 + 1e-6)

    x = torch.randn(64, I, *size, generator=g, dtype=torch.float64)
    x2 = x + torch.randn(64, I, *size, generator=g, dtype=torch.float64) * torch.rand(64, 1, 1, 1, generator=g)
    d_out = F.conv2d(x, w, stride=s, padding=p) - F.conv2d(x2, w, stride=s, padding=p)
    d_in = x - x2
    ratio2 = d_out.flatten(1).norm(dim=1) / d_in.flatten(1).norm(dim=1)
    ratio1 = d_out.flatten(1).abs().sum(1) / d_in.flatten(1).abs().sum(1)
    assert float(ratio2.max()) <= b2 * (1 + 1e-12)  # equality for a 1x1 kernel; 1e-12 covers rounding
    assert float(ratio1.max()) <= b1 * (1 + 1e-12)

    # The L1 norm is exact: a one-hot input at the largest column attains it.
    H, W = size
    best = 0.0
    for i, u, v in itertools.product(range(I), range(H), range(W)):
        e = torch.zeros(1, I, H, W, dtype=torch.float64)
        e[0, i, u, v] = 1.0
        best = max(best, float(F.conv2d(e, w, stride=s, padding=p).abs().sum()))
    assert best == pytest.approx(b1, rel=1e-12)


def test_bound_does_not_modify_weight_and_accepts_float32_with_grad():
    conv = torch.nn.Conv2d(3, 8, 5, stride=2, padding=2)
    before = conv.weight.detach().clone()
    b = conv_l2_bound(conv.weight, 2, 2, (32, 32))
    assert torch.equal(conv.weight, before)
    assert b == pytest.approx(conv_l2_bound(before.double(), 2, 2, 32), rel=1e-6)
    assert conv_sensitivity(conv, 32, "l2") == pytest.approx(b, rel=1e-12)
    assert conv_sensitivity(conv, 32, "l1") == pytest.approx(conv_l1_bound(before, 2, 2, 32), rel=1e-12)


# ------------------------------------------------------------------------------------------ tightness
TIGHTNESS_CASES = [
    # O, I, k, s, p, n
    (16, 1, 3, 1, 1, 28),
    (16, 1, 5, 2, 2, 28),
    (16, 1, 4, 2, 0, 28),
    (32, 3, 3, 1, 1, 64),
    (32, 3, 4, 2, 1, 64),
]


@pytest.mark.parametrize("O,I,k,s,p,n", TIGHTNESS_CASES)
def test_tightness(O, I, k, s, p, n):
    g = torch.Generator().manual_seed(7 + k)
    w = torch.randn(O, I, k, k, generator=g, dtype=torch.float64)
    bound = conv_l2_bound(w, s, p, n)
    lower = conv_power_iteration(w, s, p, n, iters=1000)
    simple = conv_l2_bound_simple(w, s)
    print(
        f"\n  W={O}x{I}x{k}x{k} s={s} p={p} input {n}x{n}: power/fourier = {lower / bound:.4f}, "
        f"simple/fourier = {simple / bound:.3f}"
    )
    assert lower <= bound * (1 + 1e-6)
    assert lower >= 0.95 * bound
    assert simple >= bound * (1 - 1e-12)


def test_simple_bound_often_much_looser():
    g = torch.Generator().manual_seed(3)
    ratios = []
    for _ in range(10):
        w = torch.randn(32, 3, 10, 10, generator=g, dtype=torch.float64)
        ratios.append(conv_l2_bound_simple(w, 2) / conv_l2_bound(w, 2, 0, 64))
    print(f"\n  32x3x10x10 s=2 on 64x64: simple/fourier in [{min(ratios):.2f}, {max(ratios):.2f}]")
    assert min(ratios) >= 1.0
    assert max(ratios) > 1.5


# ---------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("c", [2.5, -0.3, 1.0])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_one_by_one_scalar_kernel(c, s):
    w = torch.full((1, 1, 1, 1), c, dtype=torch.float64)
    assert conv_l2_bound(w, s, 0, (13, 10)) == pytest.approx(abs(c), rel=1e-12)
    assert conv_l1_bound(w, s, 0, (13, 10)) == pytest.approx(abs(c), rel=1e-12)
    assert conv_l2_bound_simple(w, s) == pytest.approx(abs(c), rel=1e-12)


def test_delta_kernel_is_identity():
    w = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    w[0, 0, 1, 1] = 1.0
    for size in [(5, 5), (28, 28), (17, 40)]:
        assert conv_l2_bound(w, 1, 1, size) == pytest.approx(1.0, rel=1e-12)
        assert conv_l1_bound(w, 1, 1, size) == pytest.approx(1.0, rel=1e-12)


def test_box_2x2_stride_1_is_dc_gain_4():
    w = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    assert conv_l2_bound(w, 1, 0, 64) == pytest.approx(4.0, rel=1e-12)
    # the true norm approaches 4 as the input grows: (2 cos(pi / (2 n)))^2 for the n x n valid box filter
    lower_small = conv_power_iteration(w, 1, 0, 8, iters=500)
    lower_large = conv_power_iteration(w, 1, 0, 64, iters=1000)
    assert lower_small == pytest.approx((2 * math.cos(math.pi / 16)) ** 2, rel=1e-6)
    assert lower_small < lower_large <= 4.0
    assert lower_large > 0.99 * 4.0
    assert conv_l1_bound(w, 1, 0, 64) == pytest.approx(4.0)


def test_box_2x2_stride_2_is_2():
    # The 4 polyphase taps are disjoint: x -> sum of each 2x2 block, norm sqrt(4) = 2.
    w = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    for size in [(8, 8), (9, 14), (64, 64)]:
        assert conv_l2_bound(w, 2, 0, size) == pytest.approx(2.0, rel=1e-12)
        assert conv_power_iteration(w, 2, 0, size, iters=20) == pytest.approx(2.0, rel=1e-9)
    assert conv_l1_bound(w, 2, 0, 8) == pytest.approx(1.0)


def test_haar_stride_2_is_orthogonal():
    h = torch.tensor(
        [[[1, 1], [1, 1]], [[1, -1], [1, -1]], [[1, 1], [-1, -1]], [[1, -1], [-1, 1]]], dtype=torch.float64
    )
    w = (h / 2).unsqueeze(1)  # 4 x 1 x 2 x 2, orthonormal filters
    assert conv_l2_bound(w, 2, 0, (16, 16)) == pytest.approx(1.0, rel=1e-12)
    assert conv_power_iteration(w, 2, 0, (16, 16), iters=5) == pytest.approx(1.0, rel=1e-12)
    # with 3 input channels (block-diagonal Haar) still exactly 1
    w3 = torch.zeros(12, 3, 2, 2, dtype=torch.float64)
    for i in range(3):
        w3[4 * i : 4 * i + 4, i] = h / 2
    assert conv_l2_bound(w3, 2, 0, (10, 6)) == pytest.approx(1.0, rel=1e-12)


def test_multichannel_identity_like():
    I = 3
    w = torch.zeros(I, I, 3, 3, dtype=torch.float64)
    for i in range(I):
        w[i, i, 1, 1] = 1.0
    assert conv_l2_bound(w, 1, 1, 20) == pytest.approx(1.0, rel=1e-12)
    # stacking the identity twice duplicates every pixel: norm sqrt(2)
    w2 = torch.cat([w, w], dim=0)
    assert conv_l2_bound(w2, 1, 1, 20) == pytest.approx(math.sqrt(2), rel=1e-12)
    # a 3 -> 1 channel sum: x -> x_0 + x_1 + x_2, norm sqrt(3); l1 norm 1
    wsum = w.sum(0, keepdim=True)
    assert conv_l2_bound(wsum, 1, 1, 20) == pytest.approx(math.sqrt(3), rel=1e-12)
    assert conv_l1_bound(wsum, 1, 1, 20) == pytest.approx(1.0, rel=1e-12)


def test_homogeneous_degree_one():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64)
    for f in (conv_l2_bound, conv_l1_bound):
        assert f(-3.0 * w, 2, 1, 21) == pytest.approx(3.0 * f(w, 2, 1, 21), rel=1e-12)


# -------------------------------------------------------------------------------------- projection
@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("stride", [1, 2])
def test_project_conv(norm, stride):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 5, stride=stride, padding=2)
    with torch.no_grad():
        conv.weight.mul_(10.0)
    bias = conv.bias.detach().clone()
    assert conv_sensitivity(conv, 28, norm) > 1.0
    out = project_conv_(conv, 28, norm, max_sensitivity=1.0)
    again = conv_sensitivity(conv, 28, norm)
    assert again == pytest.approx(out, rel=1e-12)
    assert 0.999 <= again <= 1.0
    assert torch.equal(conv.bias, bias)

    # below the threshold: untouched
    before = conv.weight.detach().clone()
    assert project_conv_(conv, 28, norm, max_sensitivity=2.0) == pytest.approx(again, rel=1e-12)
    assert torch.equal(conv.weight, before)


def test_project_conv_rejects_bad_max():
    conv = torch.nn.Conv2d(1, 2, 3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_sensitivity"):
            project_conv_(conv, 8, "l2", max_sensitivity=bad)


def test_parseval_retraction_moves_sigma_toward_one():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3)  # W is 16 x 27
    with torch.no_grad():
        w = conv.weight.reshape(16, -1)
        conv.weight.mul_(2.5 / torch.linalg.matrix_norm(w, ord=2))
    sigmas = []
    for _ in range(100):
        parseval_retraction_(conv, beta=0.05)
        sigmas.append(float(torch.linalg.matrix_norm(conv.weight.detach().reshape(16, -1), ord=2)))
    assert all(b <= a + 1e-9 for a, b in zip(sigmas, sigmas[1:]))
    assert sigmas[0] < 2.5
    assert abs(sigmas[-1] - 1.0) < 0.05
    # rows become orthonormal: W W^T ~ I
    m = conv.weight.detach().reshape(16, -1).double()
    assert torch.allclose(m @ m.T, torch.eye(16, dtype=torch.float64), atol=0.1)


def test_parseval_retraction_tall_matrix():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(1, 32, 3)  # W is 32 x 9: the Gram is taken on the small side
    for _ in range(200):
        parseval_retraction_(conv, beta=0.05)
    m = conv.weight.detach().reshape(32, -1).double()
    assert torch.allclose(m.T @ m, torch.eye(9, dtype=torch.float64), atol=1e-3)


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(groups=3), "groups"),
        (dict(dilation=2), "dilation"),
        (dict(padding=1, padding_mode="reflect"), "padding_mode"),
        (dict(padding=1, padding_mode="circular"), "padding_mode"),
    ],
)
def test_rejects_unsupported_convs(kwargs, match):
    conv = torch.nn.Conv2d(3, 6, 3, **kwargs)
    with pytest.raises(ValueError, match=match):
        conv_sensitivity(conv, 16, "l2")
    with pytest.raises(ValueError, match=match):
        project_conv_(conv, 16, "l2")
    with pytest.raises(ValueError, match=match):
        parseval_retraction_(conv)


def test_rejects_bad_arguments():
    w = torch.randn(4, 3, 3, 3)
    conv = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="norm"):
        conv_sensitivity(conv, 16, "linf")
    with pytest.raises(ValueError, match="4-D"):
        conv_l2_bound(w[0], 1, 0, 16)
    with pytest.raises(ValueError, match="stride"):
        conv_l2_bound(w, 0, 0, 16)
    with pytest.raises(ValueError, match="padding"):
        conv_l1_bound(w, 1, -1, 16)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv_l2_bound(w, 1, 0, 2)
    with pytest.raises(ValueError, match="input_size"):
        conv_l2_bound(w, 1, 0, (16, 16, 16))
    with pytest.raises(ValueError, match="Conv2d"):
        conv_sensitivity(torch.nn.Linear(3, 3), 16)
