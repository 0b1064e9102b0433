"""Multichannel Wiener filtering in torch: batched, on whatever device the spectrograms are.

The same algorithm as norbert (Liutkus & Stöter), whose numpy version loops over
frames and items on the CPU: a local Gaussian model per source (a power spectrogram
``v_j`` and a spatial covariance ``R_j`` per bin), refined by expectation-maximisation.
Here every item, frame and bin is processed at once; sources are filtered one at a
time through ``R_j (C_xx^-1 x)``, so no ``(sources, frames, bins, C, C)`` gain tensor
is ever held. Equality with norbert is tested in ``tests/unit/separation/test_inference.py``.
"""

from __future__ import annotations

import torch


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def residual_model(v: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Add an "everything else" source: ``v`` ``(B, S, C, F, T)`` magnitudes, ``mixture`` ``(B, C, F, T)``
    complex -> ``(B, S + 1, C, F, T)``. As ``norbert.residual_model`` (alpha 1)."""
    eps = _eps(v.dtype)
    vx = mixture.abs().clamp_min(eps)
    v_total = v.sum(1)
    gain = (vx * v_total).sum(-1, keepdim=True) / (eps + (v_total**2).sum(-1, keepdim=True))
    # norbert scales the sources by the gain but takes the residual against the unscaled
    # total; kept as is so the two agree.
    residual = (vx - v_total).clamp_min(0)
    return torch.cat([v * gain.unsqueeze(1), residual.unsqueeze(1)], dim=1)


def _invert(m: torch.Tensor, eps: float) -> torch.Tensor:
    """Inverse of ``(..., C, C)`` covariances: closed form for 1 and 2 channels (as norbert), else pinv."""
    channels = m.shape[-1]
    if channels == 1:
        return 1.0 / (m + eps)
    if channels == 2:
        a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        inv_det = 1.0 / (a * d - b * c)
        return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) * inv_det[..., None, None]
    return torch.linalg.pinv(m, rtol=eps)


def expectation_maximization(y: torch.Tensor, mixture: torch.Tensor, iterations: int, exponent: float) -> torch.Tensor:
    """Refine source estimates ``y`` ``(B, S, C, F, T)`` of ``mixture`` ``(B, C, F, T)`` (complex) by EM.

    ``exponent``: the source spectrograms enter the gains as ``|y|^exponent`` (2: power
    spectrograms, the Gaussian model of norbert; smaller: fractional spectrograms, as in
    generalized alpha-Wiener filtering, Liutkus & Badeau 2015, with softer gains).
    """
    eps = _eps(mixture.real.dtype)
    channels = mixture.shape[1]
    x = mixture.permute(0, 2, 3, 1)  # (B, F, T, C)
    y = y.permute(0, 1, 3, 4, 2)  # (B, S, F, T, C)
    eye = torch.eye(channels, dtype=x.dtype, device=x.device) * eps**0.5
    for _ in range(iterations):
        v = (y.abs() ** 2).mean(-1)  # (B, S, F, T): power spectrogram of each source
        if exponent != 2.0:
            v = v ** (exponent / 2)
        # Spatial covariance per bin: frame sum of y y^H, weighted by the powers.
        r = torch.einsum("bsftc,bsftd->bsfcd", y, y.conj()) / (eps + v.sum(-1))[..., None, None]
        cxx = torch.einsum("bsft,bsfcd->bftcd", v.to(r.dtype), r) + eye
        z = (_invert(cxx, eps) @ x.unsqueeze(-1)).squeeze(-1)  # (B, F, T, C): C_xx^-1 x
        y = v.unsqueeze(-1) * torch.einsum("bsfcd,bftd->bsftc", r, z)
    return y.permute(0, 1, 4, 2, 3)


def wiener(v: torch.Tensor, mixture: torch.Tensor, iterations: int, residual: bool = False,
           float64: bool = False, *, exponent: float) -> torch.Tensor:
    """Multichannel Wiener filter, as ``norbert.wiener(..., use_softmask=True)`` with ``exponent=2``.

    ``iterations`` and ``exponent`` have no defaults here: their defaults are the ``separation``
    block's (``conf/train.yaml``, read by :class:`msslab.separation.inference.SeparationSettings`).

    Args:
        v: ``(B, S, C, F, T)`` non-negative source magnitude estimates.
        mixture: ``(B, C, F, T)`` complex mixture STFT.
        iterations: EM iterations (0: the soft mask ``v / sum(v)`` applied to the mixture).
        exponent: the spectrogram exponent of the gains (2: norbert's power spectrograms;
            1 to 1.5 trade interference for fewer artifacts, see ``separation.wiener_exponent``).
        residual: add an "everything else" source first (``residual_model``); it is
            dropped from the result.
        float64: compute in float64 / complex128 (slower). In float32 the result equals
            norbert's on complex64 input within 1e-4 of the mixture's peak magnitude (about 1e-6 in stereo), and
            norbert's float64 result to 1e-3 (its regulariser, sqrt(eps) I, is that of the dtype).
    Returns:
        ``(B, S, C, F, T)`` complex source STFTs, in ``mixture``'s dtype.
    """
    nb_sources = v.shape[1]
    out_dtype = mixture.dtype
    if float64:
        v, mixture = v.double(), mixture.to(torch.complex128)
    else:
        v, mixture = v.float(), mixture.to(torch.complex64)
    if residual:
        v = residual_model(v, mixture)
    eps = _eps(v.dtype)
    y = v / (eps + v.sum(1, keepdim=True)) * mixture.unsqueeze(1)
    if iterations > 0:
        # Scaled down for numerical stability, per item (norbert scales each call).
        scale = (mixture.abs().flatten(1).amax(1) / 10).clamp_min(1)[:, None, None, None]
        y = expectation_maximization(y / scale.unsqueeze(1), mixture / scale, iterations, exponent) * scale.unsqueeze(1)
    return y[:, :nb_sources].to(out_dtype)
