"""BSSEval v4 (museval's ``bss_eval`` images, time-invariant filters) in batched float64 torch.

This reproduces ``museval.evaluate(references, estimates, win, hop)`` (museval 0.4,
``mode="v4"``) on CPU or CUDA:

* once per track, the correlations of every (source, channel) reference with every
  reference and every estimate over lags ``-(L-1) .. L-1`` (``L = filters_len`` = 512),
  accumulated block by block in the frequency domain, so memory is bounded whatever
  the track length;
* the Gram matrix of the delayed references (plus museval's ``eps * I``), built from
  its Toeplitz blocks with one copy, factorised once (Cholesky; LU, as museval's
  ``np.linalg.solve``, where rounding makes it indefinite) and solved for the distortion
  filters of all estimates at once; the per-source filters (the image part) come from
  the diagonal blocks, factorised in one batched call;
* per window: the windowed references go through those filters as in museval (full
  convolutions), by overlap-add over short segments, so that each frequency's product is
  one matmul for all segments of a block of windows, sources and channels; the energies
  of the decomposition are summed in the time domain. There is no Python loop over windows.

On the CPU the FFTs go through scipy's pocketfft and the Cholesky factorisation through
scipy's LAPACK, which were faster than torch's own in float64 on the machines measured.

museval's rules are kept: the estimates are cut or zero-padded to the reference
length; ``floor((N - win + hop) / hop)`` windows when ``win < N`` (the trailing
partial window is dropped), else one window over the whole signal; a window where any
reference or estimate source sums to zero over its channels at every sample is NaN for
every metric of every source; a zero denominator gives +inf, a zero numerator -inf; a
source silent over the whole track is a ``ValueError``; an estimate with a NaN or inf
sample is NaN in every window (a reference with one: every SDR, SIR, SAR and its own ISR).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.linalg.lapack
import threadpoolctl
import torch

FILTERS_LEN = 512  # museval's distortion filter length (taps)
EPS = float(np.finfo(np.float64).eps)  # museval's regularisation of the Gram matrix: G + eps * I
SOLVERS = ("exact", "stable")
# solver=stable: G + STABLE_LOADING * diag(G), relative to each delayed reference's energy, so
# scaling the inputs changes nothing: the parts of a reference more than 80 dB below its level
# (AAC's empty band above ~19 kHz) no longer steer the filters. On the stempeg excerpt with
# oracle soft-mask estimates, SIR moved by < 0.6 dB from 1e-8 to 1e-6 and by up to 12 dB from
# 1e-8 to 1e-10 (README, "BSSEval backends"); on data of condition < 1e8 it moves scores by < 1e-5 dB.
STABLE_LOADING = 1e-8
# Above this condition number of G, museval's solve (G + eps I) is rounding noise at the 1e-4
# level and more (eps * condition): its ISR/SIR/SAR depend on the scale of the inputs.
ILL_CONDITIONED = 1e12
# A window of such a track is ill-conditioned when its ISR, SIR or SAR under the two solvers
# differ by more than this.
SOLVE_SENSITIVITY_DB = 0.1
_SEGMENT_FFT = 4096  # FFT size of the per-window projections (overlap-add segments of n - L + 1 samples)


def window_count(nb_samples: int, win: int, hop: int) -> int:
    """museval's number of windows: ``floor((N - win + hop) / hop)`` if ``win < N``, else 1."""
    return (nb_samples - win + hop) // hop if win < nb_samples else 1


def bss_eval_v4(references, estimates, win: int = 44100, hop: int = 44100, *, filters_len: int = FILTERS_LEN,
                device: str | torch.device | None = None, block_bytes: int | None = None, solver: str = "exact",
                info: dict | None = None) -> tuple[np.ndarray, ...]:
    """BSSEval v4 metrics per source and window, as ``museval.evaluate`` computes them.

    Args:
        references, estimates: ``(sources, samples, channels)`` (or ``(sources, samples)``
            for mono) arrays or tensors; computed in float64.
        win, hop: window and hop in samples.
        device: where to compute (default: the references' device, CPU for numpy).
        block_bytes: memory for one block of windows (default 64 MiB on CPU, 2 GiB on CUDA).
        solver: ``exact``: museval's ``G + eps I`` (its numbers, rounding noise in ISR/SIR/SAR
            where ``G`` is numerically singular); ``stable``: ``G + STABLE_LOADING diag(G)``, a
            Tikhonov term relative to each delayed reference's energy (scale-invariant).
        info: a dict that receives ``"condition"``, an estimate of the condition number of
            museval's ``G + eps I`` (``inf`` where it is not numerically positive definite), and
            ``"ill_conditioned_windows"``: where that exceeds ``ILL_CONDITIONED``, the windows
            (not silent) whose ISR, SIR or SAR under the exact and the stable solve differ by more
            than ``SOLVE_SENSITIVITY_DB`` (both are computed then), else 0.
    Returns:
        ``(SDR, ISR, SIR, SAR)``, each a float64 numpy array ``(sources, windows)`` in dB
        (museval's order).
    Raises:
        ValueError: shapes that do not match, or a source silent over the whole track.
    """
    refs, ests = _prepare(references, estimates, device)
    nsrc, nchan, nsampl = refs.shape
    # museval's notion of silence: the sum over channels is zero at a sample (NaN counts as sound)
    sounding = {kind: x.sum(1) != 0 for kind, x in (("reference", refs), ("estimated", ests))}  # (S, N) each
    for kind, x in sounding.items():
        _check_not_silent(x, kind)
    # NaN/inf: museval's FFTs spread them over every window of the filters they enter. Compute on
    # zeros in their place and set museval's NaN pattern at the end (a diverged estimate must not
    # keep a finite SDR in its other windows).
    bad_refs, bad_ests = (~torch.isfinite(x).flatten(1).all(1) for x in (refs, ests))
    if bool(bad_refs.any() or bad_ests.any()):
        refs, ests = (torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) for x in (refs, ests))

    if solver not in SOLVERS:
        raise ValueError(f"metric.solver: unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    filter_sets, condition = _distortion_filters(refs, ests, filters_len, solver)
    length = min(win, nsampl)  # every window has this length (the partial one is dropped)
    nwin = window_count(nsampl, win, hop)
    # Each window's projections are full convolutions (length + L - 1 samples) of its references
    # with the filters, done by overlap-add over segments of `segment` samples with FFTs of
    # `n_fft`: short FFTs make every per-frequency product a matmul of many segments at once.
    n_fft = _SEGMENT_FFT if length > _SEGMENT_FFT else _fast_size(length + filters_len - 1)
    segment = min(n_fft - filters_len + 1, length)
    transfers = [_transfer_functions(filters, own, n_fft) for filters, own in filter_sets]

    if block_bytes is None:
        block_bytes = (2 << 30) if refs.device.type == "cuda" else (64 << 20)
    # about eight (S*C, length + n_fft) float64 signals per window are alive at once
    per_window = 8 * 8 * nsrc * nchan * (length + n_fft)
    block = max(1, min(nwin, block_bytes // per_window))

    # (T, S, C, length) views, no copy
    ref_windows = refs.unfold(-1, length, hop)[:, :, :nwin].permute(2, 0, 1, 3)
    est_windows = ests.unfold(-1, length, hop)[:, :, :nwin].permute(2, 0, 1, 3)
    # the solver's scores, then (ill-conditioned Gram matrix only) the other solver's, to compare
    outs = torch.empty(len(transfers), 4, nsrc, nwin, dtype=torch.float64, device=refs.device)
    for start in range(0, nwin, block):
        window = slice(start, min(start + block, nwin))
        for out, transfer in zip(outs, transfers):
            out[:, :, window] = _window_metrics(ref_windows[window], est_windows[window], transfer, n_fft, segment,
                                                filters_len)
    out = outs[0]
    silent = _silent_windows(sounding["reference"], length, hop, nwin) | _silent_windows(
        sounding["estimated"], length, hop, nwin)
    out[:, :, silent] = float("nan")
    out[:, bad_ests] = float("nan")  # museval: every metric of every window of that estimate
    if bool(bad_refs.any()):  # museval: the full projection is NaN for all; the image only for that source
        out[[0, 2, 3]] = float("nan")
        out[1, bad_refs] = float("nan")
    if info is not None:
        info["condition"] = condition
        info["ill_conditioned_windows"] = 0
        if len(outs) > 1:  # windows whose ISR/SIR/SAR depend on the solve by more than SOLVE_SENSITIVITY_DB
            a, b = outs[0, 1:], outs[1, 1:]
            differ = ~((a - b).abs() <= SOLVE_SENSITIVITY_DB) & ~(a == b)  # NaN against a number counts
            info["ill_conditioned_windows"] = int((differ.any(0).any(0) & ~silent).sum())
    sdr, isr, sir, sar = out.cpu().numpy()
    return sdr, isr, sir, sar


def gram_condition(references, filters_len: int = FILTERS_LEN) -> float:
    """Condition estimate (1-norm, LAPACK) of museval's Gram matrix ``G + eps I`` of the delayed
    ``references`` ``(sources, samples, channels)``; ``inf`` where it is not numerically positive
    definite. Above :data:`ILL_CONDITIONED`, museval's ISR/SIR/SAR are rounding noise."""
    refs, _ = _prepare(references, references, None)
    refs = torch.nan_to_num(refs, nan=0.0, posinf=0.0, neginf=0.0)
    flat = refs.reshape(-1, refs.shape[-1])
    gram = _gram_matrix(_correlations(flat, [flat], filters_len))
    return _solve_gram(gram, gram[:, :1].clone(), rebuild=lambda: gram)[1]


def _prepare(references, estimates, device) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(S, C, N)`` tensors on the device; estimates cut or zero-padded to the references."""
    if device is None:
        device = references.device if isinstance(references, torch.Tensor) else "cpu"

    def as_tensor(x):
        x = torch.as_tensor(x).to(device=device, dtype=torch.float64)
        return x[..., None] if x.ndim == 2 else x

    refs, ests = as_tensor(references), as_tensor(estimates)
    if refs.ndim != 3 or ests.ndim != 3 or refs.shape[0] != ests.shape[0] or refs.shape[2] != ests.shape[2]:
        raise ValueError(f"references {tuple(refs.shape)} and estimates {tuple(ests.shape)} must both be "
                         "(sources, samples, channels) with the same sources and channels")
    if refs.shape[1] == 0:
        raise ValueError("references are empty (0 samples)")
    nsampl = refs.shape[1]
    ests = ests[:, :nsampl] if ests.shape[1] >= nsampl else torch.nn.functional.pad(
        ests, (0, 0, 0, nsampl - ests.shape[1]))
    return refs.permute(0, 2, 1).contiguous(), ests.permute(0, 2, 1).contiguous()


def _check_not_silent(sounding: torch.Tensor, kind: str) -> None:
    silent = ~sounding.any(-1)
    if silent.any():
        raise ValueError(f"{kind} source(s) {silent.nonzero().flatten().tolist()} are silent (all zeros) over "
                         "the whole track: BSSEval needs every reference and estimated source to have sound")


def _silent_windows(sounding: torch.Tensor, length: int, hop: int, nwin: int) -> torch.Tensor:
    """``(T,)`` bool: windows where at least one source is silent, from ``sounding`` ``(S, N)``."""
    return ~sounding.unfold(-1, length, hop)[:, :nwin].any(-1).all(0)


def _rfft(x: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    """``torch.fft.rfft``; on the CPU through scipy's pocketfft, about twice as fast in float64
    as torch's CPU FFT on the machines measured (README, "BSSEval backends")."""
    if x.device.type != "cpu":
        return torch.fft.rfft(x, n=n, dim=dim)
    return torch.from_numpy(scipy.fft.rfft(x.resolve_conj().numpy(), n=n, axis=dim, workers=torch.get_num_threads()))


def _irfft(z: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    """``torch.fft.irfft``, on the CPU through scipy as ``_rfft``."""
    if z.device.type != "cpu":
        return torch.fft.irfft(z, n=n, dim=dim)
    return torch.from_numpy(scipy.fft.irfft(z.resolve_conj().numpy(), n=n, axis=dim, workers=torch.get_num_threads()))


def _fast_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT sizes pocketfft and cuFFT handle fast)."""
    best = 1 << max(0, math.ceil(math.log2(n)))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def _correlations(x: torch.Tensor, ys: list[torch.Tensor], lags: int, block_bytes: int = 32 << 20) -> torch.Tensor:
    """Linear cross-correlations ``r[k, p, q] = sum_n x[p, n + k - lags + 1] y[q, n]`` for
    ``k = 0 .. 2 lags - 2`` (lags ``-(lags-1) .. lags-1``), of ``x`` ``(P, N)`` and ``y``, the rows of
    the tensors ``ys`` ``(Q_i, N)`` one after the other.

    Overlap-save in blocks: ``y`` is cut into blocks of ``step`` samples and each block is
    correlated with the stretch of ``x`` around it, ``step + 2 (lags - 1)`` long, so the
    circular correlation holds the wanted lags exactly; the cross-spectra are summed over
    blocks (one batched matmul per group of blocks) and inverted once. Groups are padded
    locally, so no copy of the whole track is made. The FFTs run along the leading (time)
    axis, so that their outputs are already the (frequency, rows, blocks) operands of the matmul.
    """
    n_fft = 1 << max(4, math.ceil(math.log2(16 * lags)))
    step = n_fft - 2 * (lags - 1)
    nsampl = x.shape[-1]
    nblocks = -(-nsampl // step)
    nbins = n_fft // 2 + 1
    nys = sum(y.shape[0] for y in ys)
    group = max(1, block_bytes // (16 * nbins * (x.shape[0] + nys)))
    conj_cross = torch.zeros(nbins, x.shape[0], nys, dtype=torch.complex128, device=x.device)
    for first in range(0, nblocks, group):
        last = min(first + group, nblocks)
        lo, hi = first * step - (lags - 1), last * step + lags - 1
        x_part = x[:, max(lo, 0):hi]
        if lo < 0 or hi > nsampl:  # only the first and last groups need zeros around them
            x_part = torch.nn.functional.pad(x_part, (max(0, -lo), max(0, hi - nsampl)))
        # conj(X) @ Y summed over blocks is the conjugate cross-spectrum; contiguous operands with
        # the conjugation resolved: torch's batched complex matmul otherwise falls back to one
        # small product per frequency (tens of times slower)
        x_spec = _rfft(x_part.unfold(-1, n_fft, step).permute(2, 0, 1), n_fft, dim=0).conj().resolve_conj()  # (F, P, b)
        lo, hi = first * step, last * step
        column = 0
        for y in ys:
            y_part = y[:, lo:hi]
            if hi > nsampl:
                y_part = torch.nn.functional.pad(y_part, (0, hi - nsampl))
            # (step, b, Q) blocks as a strided view, zero-padded to n_fft by the FFT: (F, b, Q)
            y_spec = _rfft(y_part.reshape(y.shape[0], last - first, step).permute(2, 1, 0), n_fft, dim=0)
            conj_cross[:, :, column:column + y.shape[0]] += torch.matmul(x_spec, y_spec)  # (F, P, b) @ (F, b, Q)
            column += y.shape[0]
    return _irfft(conj_cross.conj(), n_fft, dim=0)[: 2 * lags - 1]


def _distortion_filters(refs: torch.Tensor, ests: torch.Tensor, filters_len: int, solver: str = "exact"):
    """museval's time-invariant distortion filters.

    Returns ``(sets, condition)``: ``sets`` is a list of ``(filters, own)``, ``filters``
    ``(S_est, S_ref, C_in, C_out, L)``: estimate ``e`` projected on all delayed references, and
    ``own`` ``(S, C_in, C_out, L)``: estimate ``j`` projected on the delayed channels of reference
    ``j`` only; first those of ``solver``, then, where the Gram matrix's ``condition`` (of
    ``G + eps I``) exceeds ``ILL_CONDITIONED``, those of the other solver, to compare per window.
    """
    nsrc, nchan, nsampl = refs.shape
    nref, size = nsrc * nchan, nsrc * nchan * filters_len
    flat_refs = refs.reshape(nref, nsampl)
    corr = _correlations(flat_refs, [flat_refs, ests.reshape(nref, nsampl)], filters_len)
    lag = torch.arange(filters_len, device=refs.device)
    # D[(p, l), e] = <r_p delayed by l, estimate channel e> = corr(r_p, e) at lag -l
    cross = corr[filters_len - 1 - lag, :, nref:].permute(1, 0, 2).reshape(size, nref)
    block = nchan * filters_len
    rhs = torch.stack([cross[j * block:(j + 1) * block, j * nchan:(j + 1) * nchan] for j in range(nsrc)])

    def solve(kind: str):
        def gram():
            g = _gram_matrix(corr[:, :, :nref])
            if kind == "stable":  # G + eps I + loading * diag(G): each reference's energy sets its own term
                g.diagonal().mul_(1 + STABLE_LOADING)
            return g

        full = gram()
        # copied before the full system's factorisation, which overwrites the Gram matrix
        blocks = torch.stack([full[j * block:(j + 1) * block, j * block:(j + 1) * block] for j in range(nsrc)])
        solution, condition = _solve_gram(full, cross, rebuild=gram)
        filters = solution.reshape(nsrc, nchan, filters_len, nsrc, nchan).permute(3, 0, 1, 4, 2)
        if nsrc == 1:  # the same system as above: identical filters, so SIR is +inf as in museval
            return (filters, filters[:, 0]), condition
        own = _solve_gram(blocks, rhs)[0].reshape(nsrc, nchan, filters_len, nchan).permute(0, 1, 3, 2)
        return (filters, own), condition

    exact, condition = solve("exact")  # its condition estimate says whether museval's numbers hold
    if solver == "exact":
        return [exact] + ([solve("stable")[0]] if condition > ILL_CONDITIONED else []), condition
    return [solve("stable")[0]] + ([exact] if condition > ILL_CONDITIONED else []), condition


def _gram_matrix(corr: torch.Tensor) -> torch.Tensor:
    """``G + eps I`` ``(P L, P L)`` with ``G[(p, a), (q, b)] = <r_p delayed by a, r_q delayed by b>
    = corr[L - 1 + b - a, p, q]``, from the correlations ``corr`` ``(2 L - 1, P, P)``.

    Each (p, q) block is Toeplitz: a strided view of the correlations (stride -1 over ``a``,
    +1 over ``b``; numpy allows negative strides, torch does not) copied once into place.
    Both triangles are filled; the Cholesky factorisation reads the lower one.
    """
    nlags, nref = corr.shape[0], corr.shape[1]
    lags = (nlags + 1) // 2
    if corr.device.type == "cpu":
        c = np.ascontiguousarray(corr.permute(1, 2, 0).numpy())  # (p, q, lag)
        step = c.strides[-1]
        toeplitz = np.lib.stride_tricks.as_strided(c[:, :, lags - 1:], shape=(nref, nref, lags, lags),
                                                   strides=(*c.strides[:2], -step, step), writeable=False)
        gram = torch.from_numpy(np.ascontiguousarray(toeplitz.transpose(0, 2, 1, 3)).reshape(nref * lags, -1))
    else:  # unfold gives c[a + b]; flipped over a, c[b - a]
        hankel = corr.permute(1, 2, 0).contiguous().unfold(-1, lags, 1)  # (p, q, i, j)
        gram = hankel.flip(2).permute(0, 2, 1, 3).reshape(nref * lags, nref * lags)
    gram.diagonal().add_(EPS)
    return gram


def _condition_from_factor(factor: np.ndarray, norm: float) -> float:
    """1-norm condition estimate (LAPACK ``dpocon``, O(n^2)) from the upper Cholesky factor
    of a matrix of 1-norm ``norm``."""
    rcond, info = scipy.linalg.lapack.dpocon(factor, norm)  # upper factor
    return 1 / rcond if info == 0 and rcond > 0 else float("inf")


def _solve_gram(gram: torch.Tensor, rhs: torch.Tensor, rebuild=None):
    """Solve ``gram @ x = rhs`` for a (batch of) regularised Gram matrices; ``(x, condition)``.

    Cholesky (half the work of museval's LU, and the factorisation dominates the cost);
    LU where rounding makes the matrix not numerically positive definite (a stem whose
    channels are identical); least squares, as museval, where it is exactly singular.
    With ``rebuild`` (a function that returns ``gram`` again), the Cholesky factor may
    overwrite ``gram`` in place. ``condition``: LAPACK's 1-norm estimate
    (largest over a batch), ``inf`` where Cholesky fails.
    """
    result = _cholesky_solve(gram, rhs, overwrite=rebuild is not None)
    if result is not None:
        return result
    gram = rebuild() if rebuild is not None else gram
    gram = (gram + gram.mT) / 2  # exactly symmetric, as museval builds it
    factors, pivots, info = torch.linalg.lu_factor_ex(gram)
    if bool((info == 0).all()):
        return torch.linalg.lu_solve(factors, pivots, rhs), float("inf")
    if gram.device.type == "cpu":  # gelsd (SVD) as numpy's lstsq; CPU only
        return torch.linalg.lstsq(gram, rhs, driver="gelsd").solution, float("inf")
    return torch.linalg.pinv(gram, hermitian=True) @ rhs, float("inf")


def _cholesky_solve(gram: torch.Tensor, rhs: torch.Tensor, overwrite: bool):
    """Cholesky solve of (a batch of) ``gram @ x = rhs`` from the lower triangle: ``(x, condition)``,
    or ``None`` if a matrix is not numerically positive definite.

    On the CPU through scipy's LAPACK (OpenBLAS) on the C-ordered memory as it is: there
    it is the transposed matrix in Fortran order, whose upper triangle is our lower one.
    This skips torch's transposing copy and its zeroing of the other triangle, and
    OpenBLAS's factorisation is faster than torch's MKL one on the machines measured.
    """
    if gram.device.type != "cpu":
        factor, info = torch.linalg.cholesky_ex(gram)
        if not bool((info == 0).all()):
            return None
        norms = gram.abs().sum(-2).amax(-1).reshape(-1).tolist()
        upper = factor.reshape(-1, *factor.shape[-2:]).mT.cpu().numpy()  # LAPACK's estimator, on the CPU
        condition = max(_condition_from_factor(np.asfortranarray(u), n) for u, n in zip(upper, norms))
        return torch.cholesky_solve(rhs, factor), condition
    n = gram.shape[-1]
    grams, rhss = gram.reshape(-1, n, n), rhs.reshape(-1, n, rhs.shape[-1])
    if not grams.is_contiguous():
        grams, overwrite = grams.contiguous(), True
    solutions, condition = [], 0.0
    with _blas_threads():
        for matrix, right in zip(grams.numpy(), rhss.numpy()):
            norm = float(np.abs(matrix).sum(0).max())  # symmetric: the 1-norm, before it is overwritten
            factor, info = scipy.linalg.lapack.dpotrf(matrix.T, lower=0, clean=0, overwrite_a=overwrite)
            if info != 0:
                return None
            condition = max(condition, _condition_from_factor(factor, norm))
            solution, info = scipy.linalg.lapack.dpotrs(factor, right, lower=0)
            if info != 0:
                return None
            solutions.append(solution)
    return torch.from_numpy(np.stack(solutions)).reshape(rhs.shape), condition


_THREADPOOLS = None


def _blas_threads():
    """Context in which scipy's BLAS uses as many threads as torch (one for ``torch.set_num_threads(1)``)."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = threadpoolctl.ThreadpoolController()
    return _THREADPOOLS.limit(limits=torch.get_num_threads(), user_api="blas")


def _transfer_functions(filters: torch.Tensor, own_filters: torch.Tensor, n_fft: int) -> torch.Tensor:
    """``(F, S*C_in, 2 S*C_out)``: per frequency, the filters onto all delayed references, then
    the per-source filters as a block-diagonal matrix, so that both projections of every
    estimate are one batched matmul (only the first half for a single source: they are equal)."""
    nsrc, _, nchan = filters.shape[:3]
    size = nsrc * nchan
    full = _rfft(filters, n_fft).permute(4, 1, 2, 0, 3).reshape(-1, size, size)  # (F, (S_ref, C_in), (S_est, C_out))
    if nsrc == 1:
        return full.contiguous()
    own = torch.zeros(full.shape[0], nsrc, nchan, nsrc, nchan, dtype=full.dtype, device=full.device)
    index = torch.arange(nsrc, device=full.device)
    own[:, index, :, index] = _rfft(own_filters, n_fft).permute(0, 3, 1, 2)  # (S, F, C_in, C_out)
    return torch.cat([full, own.view_as(full)], dim=-1).contiguous()


def _window_metrics(ref_windows, est_windows, transfer, n_fft: int, segment: int, filters_len: int) -> torch.Tensor:
    """``(4, S, T)`` SDR, ISR, SIR, SAR (dB) of a block of windows ``(T, S, C, length)``.

    As museval: each window's references are projected (full convolution, ``length + L - 1``
    samples) and the estimate is zero-padded to that length; all energies in the time domain.
    """
    nwin, nsrc, nchan, length = ref_windows.shape
    size, outputs = nsrc * nchan, transfer.shape[-1]
    nseg = -(-length // segment)
    refs = ref_windows.reshape(nwin, size, length)
    ests = est_windows.reshape(nwin, size, length)
    # (T, S*C, nseg, segment) -> spectra (F, T * nseg, S*C) -> projections (F, T * nseg, outputs)
    segments = refs.new_zeros(nwin, size, nseg * segment)
    segments[..., :length] = refs
    # FFTs along a strided axis, so that no transposing copy is needed around the matmul (pocketfft
    # gathers strided transforms in vectorised batches)
    spectra = _rfft(segments.view(nwin, size, nseg, segment).permute(3, 0, 2, 1), n_fft, dim=0)  # (F, T, nseg, S*C)
    projected = torch.matmul(spectra.reshape(-1, nwin * nseg, size), transfer)
    pieces = _irfft(projected.view(-1, nwin, nseg, outputs).permute(1, 3, 2, 0), n_fft)  # (T, outputs, nseg, n_fft)
    total = length + filters_len - 1
    if nseg == 1:
        proj = pieces[:, :, 0, :total]
    else:  # overlap-add: each piece spills n_fft - segment = L - 1 <= segment samples into the next segment
        proj = refs.new_empty(nwin, outputs, nseg + 1, segment)
        proj[:, :, :nseg] = pieces[..., :segment]
        proj[:, :, nseg] = 0
        proj[:, :, 1:, : n_fft - segment] += pieces[..., segment:]
        proj = proj.view(nwin, outputs, -1)[..., :total]
    proj_all = proj[:, :size]
    proj_own = proj[:, size:] if nsrc > 1 else proj_all  # one source: the image is the whole projection

    def energy(x):  # (T, S*C, samples) -> (S, T)
        return torch.linalg.vecdot(x, x).view(nwin, nsrc, nchan).sum(-1).T

    def energy_of_difference(padded, x):  # of padded - x zero-padded to the length of padded
        return energy(padded[..., :length] - x) + energy(padded[..., length:])

    ref_energy = energy(refs)
    # SDR from the windows themselves, so that an estimate equal to its reference gives exactly +inf
    sdr = _db(ref_energy, energy(ests - refs))
    isr = _db(ref_energy, energy_of_difference(proj_own, refs))
    sir = _db(energy(proj_own), energy(proj_all - proj_own))
    sar = _db(energy(proj_all), energy_of_difference(proj_all, ests))
    return torch.stack([sdr, isr, sir, sar])


def _db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``10 log10(num / den)``; +inf where ``den == 0`` (museval's ``_safe_db``), -inf where only ``num`` is."""
    return torch.where(den == 0, torch.full_like(num, float("inf")), 10 * torch.log10(num / den))
