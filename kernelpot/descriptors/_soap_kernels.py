"""Numba kernels for the SOAP power spectrum and its derivatives.

Plain arrays in, plain arrays out; all validation, tabulation and allocation
happens in :mod:`kernelpot.descriptors.soap`. Index conventions:

* ``lm = l * l + l + m`` for real spherical harmonics, ``m = -l..l``;
* density coefficients ``c[species, n, lm]``;
* for each neighbour image, its radial values G, G' and harmonics Y, grad Y
  are kept after the density pass; the contraction of its density derivative
  with ``c`` factorises (:func:`_pair_tmat`) into
  ``T[alpha, n, l, (b, n')] = G'_nl u_alpha A[l, (b, n')] + G_nl B_alpha[l, (b, n')]``
  (images of one atom summed), from which every feature derivative of that
  atom is assembled (:func:`_write_row`).

Per neighbour image the work is: the coefficients (n_max (l_max+1)^2
multiply-adds), A and B (4 S n_max (l_max+1)^2), T (6 n_max S n_max (l_max+1))
and one pass that assembles, normalises and writes the 3 F-long output rows
(the normalisation's p . dp is a dot product with T, :func:`_adjoint`). Every
output row is written exactly once. Everything else is linear in T and goes
through per-species sums of T, assembled once per centre: the self block
(minus the sum over the neighbours, translation invariance) and the strain
rows (sum of T r_b over images). Per-centre scratch is O(S^2 n_max^2 (l_max+1)).

Loops run over long contiguous axes with unsigned computed offsets: numba
keeps LLVM's SLP vectoriser off, and its loop vectoriser (AVX-512, 4-way
interleaved) leaves loops of fewer than ~4-32 iterations, or with signed
(wrap-around checked) computed indices, scalar.
"""

import numba
import numpy as np
from numba import prange

# Unsigned index type for computed offsets (see _write_row).
_U = numba.uint64


@numba.njit(cache=True, inline="always")
def _hermite(gtab, dgtab, h, r, g, dg):
    """Cubic Hermite interpolation of the radial tables at ``r``.

    ``g[n, l]`` gets the interpolant and ``dg[n, l]`` its exact derivative.
    """
    n_knots = gtab.shape[0]
    x = r / h
    k = int(x)
    if k > n_knots - 2:
        k = n_knots - 2
    t = x - k
    t2 = t * t
    t3 = t2 * t
    h00 = 2.0 * t3 - 3.0 * t2 + 1.0
    h10 = (t3 - 2.0 * t2 + t) * h
    h01 = -2.0 * t3 + 3.0 * t2
    h11 = (t3 - t2) * h
    d00 = (6.0 * t2 - 6.0 * t) / h
    d10 = 3.0 * t2 - 4.0 * t + 1.0
    d01 = (-6.0 * t2 + 6.0 * t) / h
    d11 = 3.0 * t2 - 2.0 * t
    n_max = gtab.shape[1]
    n_l = gtab.shape[2]
    for n in range(n_max):
        for l in range(n_l):
            y0 = gtab[k, n, l]
            y1 = gtab[k + 1, n, l]
            m0 = dgtab[k, n, l]
            m1 = dgtab[k + 1, n, l]
            g[n, l] = h00 * y0 + h10 * m0 + h01 * y1 + h11 * m1
            dg[n, l] = d00 * y0 + d10 * m0 + d01 * y1 + d11 * m1


@numba.njit(cache=True, inline="always")
def _real_sph(ux, uy, uz, l_max, norm, want_grad, ylm, gylm, cm, sm, plm, dplm):
    """Real spherical harmonics at the unit vector u and their tangential gradients.

    ``ylm[lm]`` gets Y_lm(u); ``gylm[alpha, lm]`` gets (I - u u^T) grad f, where
    f = N P~_l^m(z) Re/Im (x + i y)^|m| is the polynomial extension of Y_lm
    off the sphere; dividing by |r| gives d Y_lm(r/|r|) / d r.
    ``cm, sm`` (l_max + 1,) and ``plm, dplm`` (l_max + 1, l_max + 1) are scratch.
    """
    cm[0] = 1.0
    sm[0] = 0.0
    for m in range(1, l_max + 1):
        cm[m] = ux * cm[m - 1] - uy * sm[m - 1]
        sm[m] = ux * sm[m - 1] + uy * cm[m - 1]
    # P~_l^m(z): associated Legendre without the sin^m factor and phase.
    for m in range(l_max + 1):
        if m == 0:
            pmm = 1.0
        else:
            pmm = plm[m - 1, m - 1] * (2 * m - 1)
        plm[m, m] = pmm
        dplm[m, m] = 0.0
        if m + 1 <= l_max:
            plm[m + 1, m] = (2 * m + 1) * uz * pmm
            dplm[m + 1, m] = (2 * m + 1) * pmm
        for l in range(m + 2, l_max + 1):
            plm[l, m] = ((2 * l - 1) * uz * plm[l - 1, m] - (l + m - 1) * plm[l - 2, m]) / (l - m)
            dplm[l, m] = (
                (2 * l - 1) * (plm[l - 1, m] + uz * dplm[l - 1, m]) - (l + m - 1) * dplm[l - 2, m]
            ) / (l - m)
    for l in range(l_max + 1):
        base = l * l + l
        nrm = norm[base]
        ylm[base] = nrm * plm[l, 0]
        if want_grad:
            gz = nrm * dplm[l, 0]
            # tangential projection of (0, 0, gz)
            gylm[0, base] = -ux * uz * gz
            gylm[1, base] = -uy * uz * gz
            gylm[2, base] = gz - uz * uz * gz
        for m in range(1, l + 1):
            nrm = norm[base + m]
            p = nrm * plm[l, m]
            dp = nrm * dplm[l, m]
            ylm[base + m] = p * cm[m]
            ylm[base - m] = p * sm[m]
            if want_grad:
                # m > 0: f = p c_m
                fx = p * m * cm[m - 1]
                fy = -p * m * sm[m - 1]
                fz = dp * cm[m]
                ud = ux * fx + uy * fy + uz * fz
                gylm[0, base + m] = fx - ux * ud
                gylm[1, base + m] = fy - uy * ud
                gylm[2, base + m] = fz - uz * ud
                # m < 0: f = p s_m
                fx = p * m * sm[m - 1]
                fy = p * m * cm[m - 1]
                fz = dp * sm[m]
                ud = ux * fx + uy * fy + uz * fz
                gylm[0, base - m] = fx - ux * ud
                gylm[1, base - m] = fy - uy * ud
                gylm[2, base - m] = fz - uz * ud


@numba.njit(cache=True, inline="always")
def _pair_tmat(g, dg, ylm, gylm, ux, uy, uz, ct, n_l, nq, n_max, ab, tmat, accumulate):
    """Contraction of one neighbour image's density derivative with the coefficients.

    ``tmat[alpha, n, l, q] = sum_m dc_{n l m, alpha} c[q, l m]`` with
    ``dc_{nlm, alpha} = G'_nl u_alpha Y_lm + G_nl dY_lm/dr_alpha`` separable in (n, l) x
    (l, m), so it factorises through ``A[l, q] = sum_m Y_lm c[q, lm]`` and
    ``B_alpha[l, q] = sum_m dY_lm/dr_alpha c[q, lm]``::

        tmat[alpha, n, l, q] = G'_nl u_alpha A[l, q] + G_nl B_alpha[l, q]

    4 nq (l_max+1)^2 + 6 n_max nq (l_max+1) multiply-adds instead of the
    6 n_max (l_max+1)^2 of dc plus 3 n_max nq (l_max+1)^2 of contracting it.
    ``tmat`` is (3, n_max n_l nq), flat over (n, l, q): q = (b, n') is the
    fastest axis so both loops below are over q with scalar factors, which
    LLVM vectorises (l fastest, as in the feature order, made it a run of
    l_max + 1 = 7, too short for the vectoriser: 4x slower). ``g, dg`` are G
    and G' as ``[n, l]``; ``gylm`` is the gradient of Y (already divided by
    r); ``ab`` (4, n_l nq) is scratch for A, B_x, B_y, B_z.
    """
    # A, B: q in blocks of 4 with the 16 sums in registers (numba leaves the
    # SLP vectoriser off, and memory accumulators over a q run of n_max = 8
    # are load/store bound: 2x slower).
    nqu = _U(nq)
    nq4 = nqu - nqu % _U(4)
    for l in range(_U(n_l)):
        lm0 = l * l
        lm1 = lm0 + _U(2) * l + _U(1)
        o = l * nqu
        for q0 in range(_U(0), nq4, _U(4)):
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            x0 = 0.0
            x1 = 0.0
            x2 = 0.0
            x3 = 0.0
            y0 = 0.0
            y1 = 0.0
            y2 = 0.0
            y3 = 0.0
            z0 = 0.0
            z1 = 0.0
            z2 = 0.0
            z3 = 0.0
            for lm in range(lm0, lm1):
                y = ylm[lm]
                gx = gylm[0, lm]
                gy = gylm[1, lm]
                gz = gylm[2, lm]
                crow = ct[lm]
                c0 = crow[q0]
                c1 = crow[q0 + _U(1)]
                c2 = crow[q0 + _U(2)]
                c3 = crow[q0 + _U(3)]
                a0 += y * c0
                a1 += y * c1
                a2 += y * c2
                a3 += y * c3
                x0 += gx * c0
                x1 += gx * c1
                x2 += gx * c2
                x3 += gx * c3
                y0 += gy * c0
                y1 += gy * c1
                y2 += gy * c2
                y3 += gy * c3
                z0 += gz * c0
                z1 += gz * c1
                z2 += gz * c2
                z3 += gz * c3
            k = o + q0
            ab[0, k] = a0
            ab[0, k + _U(1)] = a1
            ab[0, k + _U(2)] = a2
            ab[0, k + _U(3)] = a3
            ab[1, k] = x0
            ab[1, k + _U(1)] = x1
            ab[1, k + _U(2)] = x2
            ab[1, k + _U(3)] = x3
            ab[2, k] = y0
            ab[2, k + _U(1)] = y1
            ab[2, k + _U(2)] = y2
            ab[2, k + _U(3)] = y3
            ab[3, k] = z0
            ab[3, k + _U(1)] = z1
            ab[3, k + _U(2)] = z2
            ab[3, k + _U(3)] = z3
        for q in range(nq4, nqu):
            a0 = 0.0
            x0 = 0.0
            y0 = 0.0
            z0 = 0.0
            for lm in range(lm0, lm1):
                c0 = ct[lm, q]
                a0 += ylm[lm] * c0
                x0 += gylm[0, lm] * c0
                y0 += gylm[1, lm] * c0
                z0 += gylm[2, lm] * c0
            ab[0, o + q] = a0
            ab[1, o + q] = x0
            ab[2, o + q] = y0
            ab[3, o + q] = z0
    sn = _U(n_l) * nqu
    t0 = tmat[0]
    t1 = tmat[1]
    t2 = tmat[2]
    aa = ab[0]
    bx = ab[1]
    by = ab[2]
    bz = ab[3]
    for n in range(_U(n_max)):
        for l in range(_U(n_l)):
            c2 = g[n, l]
            c1 = dg[n, l]
            cx = c1 * ux
            cy = c1 * uy
            cz = c1 * uz
            ot = n * sn + l * nqu
            o = l * nqu
            if accumulate:
                for q in range(nqu):
                    av = aa[o + q]
                    t0[ot + q] += cx * av + c2 * bx[o + q]
                    t1[ot + q] += cy * av + c2 * by[o + q]
                    t2[ot + q] += cz * av + c2 * bz[o + q]
            else:
                for q in range(nqu):
                    av = aa[o + q]
                    t0[ot + q] = cx * av + c2 * bx[o + q]
                    t1[ot + q] = cy * av + c2 * by[o + q]
                    t2[ot + q] = cz * av + c2 * bz[o + q]


@numba.njit(cache=True, inline="always")
def _assemble_add(t, s, n_species, n_max, n_l, feat_factor, out):
    """Add the (unnormalised) derivative of every feature for species-s neighbours to ``out``.

    ``t`` is flat over ``(n, b * n_max + n', l)`` and holds sum_m D[n, lm] c[b, n', lm].
    Features are in their storage order (a <= b, n, n' [>= n if a == b], l)
    with d p = [a == s] T[n; b, n'] + [b == s] T[n'; a, n], times the
    prefactor; species pairs without s get nothing. Used for the per-centre
    sums (self block, strain); the per-pair rows go through :func:`_write_row`,
    whose loop structure (and unsigned offsets) this mirrors.
    """
    nm = _U(n_max)
    nl = _U(n_l)
    nq = _U(n_species) * nm
    sn = nq * nl
    f = _U(0)
    for a in range(n_species):
        for b in range(a, n_species):
            if a != s and b != s:
                f += (nm * (nm + _U(1)) // _U(2) if a == b else nm * nm) * nl
            elif a == b:
                au = _U(a)
                for n in range(nm):
                    for n2 in range(n, nm):
                        o1 = n * sn + au * nm + n2
                        o2 = n2 * sn + au * nm + n
                        for l in range(nl):
                            out[f + l] += feat_factor[f + l] * (t[o1 + l * nq] + t[o2 + l * nq])
                        f += nl
            elif a == s:
                bu = _U(b)
                for n in range(nm):
                    for n2 in range(nm):
                        o1 = n * sn + bu * nm + n2
                        for l in range(nl):
                            out[f + l] += feat_factor[f + l] * t[o1 + l * nq]
                        f += nl
            else:
                au = _U(a)
                for n in range(nm):
                    for n2 in range(nm):
                        o2 = n2 * sn + au * nm + n
                        for l in range(nl):
                            out[f + l] += feat_factor[f + l] * t[o2 + l * nq]
                        f += nl


@numba.njit(cache=True, inline="always")
def _adjoint(w, s, n_species, n_max, n_l, coef):
    """Transpose of :func:`_assemble_add`: ``w`` (flat like ``t``) with
    sum_f coef[f] / feat_factor[f] dp[f] = sum_x w[x] t[x] for every t.

    With ``coef = feat_factor * p`` this gives p . dp as one contiguous dot
    product over T (n_max nq n_l terms) instead of a second pass over the F
    features, so each pair row can be normalised while it is written once.
    """
    nm = _U(n_max)
    nl = _U(n_l)
    nq = _U(n_species) * nm
    sn = nq * nl
    for x in range(nm * sn):
        w[x] = 0.0
    f = _U(0)
    for a in range(n_species):
        for b in range(a, n_species):
            if a != s and b != s:
                f += (nm * (nm + _U(1)) // _U(2) if a == b else nm * nm) * nl
            elif a == b:
                au = _U(a)
                for n in range(nm):
                    for n2 in range(n, nm):
                        o1 = n * sn + au * nm + n2
                        o2 = n2 * sn + au * nm + n
                        for l in range(nl):
                            w[o1 + l * nq] += coef[f + l]
                            w[o2 + l * nq] += coef[f + l]
                        f += nl
            elif a == s:
                bu = _U(b)
                for n in range(nm):
                    for n2 in range(nm):
                        o1 = n * sn + bu * nm + n2
                        for l in range(nl):
                            w[o1 + l * nq] += coef[f + l]
                        f += nl
            else:
                au = _U(a)
                for n in range(nm):
                    for n2 in range(nm):
                        o2 = n2 * sn + au * nm + n
                        for l in range(nl):
                            w[o2 + l * nq] += coef[f + l]
                        f += nl


@numba.njit(cache=True, inline="always")
def _write_row(t, s, n_species, n_max, n_l, ffi, p, pd, row):
    """One normalised derivative row of a neighbour of species s, written once.

    ``row[f] = ffi[f] (T[n; b, n'] [a == s] + T[n'; a, n] [b == s]) - p[f] pd`` with
    ``ffi = feat_factor / |p|`` and ``pd = p . dp / |p|``: the assembly of
    :func:`_assemble` fused with the normalisation chain rule (I - p p^T) / |p|.
    Species pairs without s reduce to the rank-1 term -p pd (contiguous).
    T is read with stride nq along l (its layout suits :func:`_pair_tmat`,
    which costs more than this transposed read). Offsets are unsigned: numba wraps negative signed indices, and that check
    on computed offsets keeps LLVM from vectorising the short l runs (3x slower).
    """
    nm = _U(n_max)
    nl = _U(n_l)
    nq = _U(n_species) * nm
    sn = nq * nl
    f = _U(0)
    for a in range(n_species):
        for b in range(a, n_species):
            if a != s and b != s:
                cnt = (nm * (nm + _U(1)) // _U(2) if a == b else nm * nm) * nl
                for k in range(f, f + cnt):
                    row[k] = 0.0 - p[k] * pd
                f += cnt
            elif a == b:
                au = _U(a)
                for n in range(nm):
                    for n2 in range(n, nm):
                        o1 = n * sn + au * nm + n2
                        o2 = n2 * sn + au * nm + n
                        for l in range(nl):
                            row[f + l] = ffi[f + l] * (t[o1 + l * nq] + t[o2 + l * nq]) - p[f + l] * pd
                        f += nl
            elif a == s:
                bu = _U(b)
                for n in range(nm):
                    for n2 in range(nm):
                        o1 = n * sn + bu * nm + n2
                        for l in range(nl):
                            row[f + l] = ffi[f + l] * t[o1 + l * nq] - p[f + l] * pd
                        f += nl
            else:
                au = _U(a)
                for n in range(nm):
                    for n2 in range(nm):
                        o2 = n2 * sn + au * nm + n
                        for l in range(nl):
                            row[f + l] = ffi[f + l] * t[o2 + l * nq] - p[f + l] * pd
                        f += nl


_VOIGT_A = (0, 1, 2, 1, 0, 0)
_VOIGT_B = (0, 1, 2, 2, 2, 1)


@numba.njit(cache=True, inline="always")
def _strain_add(ts, used, tk, vec, ntq):
    """``ts[voigt] (+)= tk[a] r_b`` for the six (a, b) of the Voigt order (= when not ``used``)."""
    for vo in range(6):
        vb = vec[_VOIGT_B[vo]]
        src_t = tk[_VOIGT_A[vo]]
        dst_t = ts[vo]
        if used:
            for x in range(ntq):
                dst_t[x] += src_t[x] * vb
        else:
            for x in range(ntq):
                dst_t[x] = src_t[x] * vb


# Reassociation lets LLVM vectorise the reductions (dot products, sums over m);
# it changes results only at the level of round-off.
_FASTMATH = {"reassoc", "nsz", "contract"}


@numba.njit(cache=True, fastmath=_FASTMATH)
def _soap_centres(
    i_start,
    i_end,
    img_offsets,
    img_species,
    img_vectors,
    img_slot,
    center_species,
    pair_offsets,
    self_slot,
    gtab,
    dgtab,
    h,
    r_cut,
    cutoff_width,
    center_weight,
    ylm_norm,
    l_of_lm,
    feat_index,
    feat_factor,
    n_species,
    do_grad,
    do_strain,
    normalize,
    features,
    pair_grad,
    strain_grad,
):
    """Body of :func:`soap_kernel` for centres i_start..i_end-1, with scratch allocated once.

    Per centre: (1) one pass over the neighbour images accumulates the density
    coefficients c and keeps each image's radial values G, G' and spherical
    harmonics Y, grad Y (a few kB, cache-resident); (2) the power spectrum and
    its norm; (3) per neighbour atom, the factorised contraction
    (:func:`_pair_tmat`, summed over the atom's images) into a small
    L1-resident ``tmat`` and its three feature rows, assembled, normalised and
    written once to ``pair_grad`` (:func:`_write_row`). The self block is
    minus the sum of the other blocks (translation invariance): T is summed per
    neighbour species (``tsum``, ~nq n_max n_l numbers per pair instead of a
    read-modify-write of 3 F) and assembled once per centre. Strain: every
    image's T times r_b goes into per-species sums ``tstr``, assembled once.
    """
    n_max = gtab.shape[1]
    n_l = gtab.shape[2]
    l_max = n_l - 1
    n_lm = n_l * n_l
    n_feat = feat_index.shape[0]
    nq = n_species * n_max
    need_d = do_grad or do_strain
    y00 = ylm_norm[0]
    r_on = r_cut - cutoff_width

    # Scratch sized for the largest centre of this range, allocated once per
    # chunk: per-centre allocation churns the allocator and page-faults.
    max_slots = 0
    max_img = 0
    for i in range(i_start, i_end):
        max_img = max(max_img, img_offsets[i + 1] - img_offsets[i])
        if do_grad:
            max_slots = max(max_slots, pair_offsets[i + 1] - pair_offsets[i])
    n_keep = max_img if need_d else 0
    g_k = np.empty((n_keep, n_max, n_l))
    dg_k = np.empty((n_keep, n_max, n_l))
    ylm_k = np.empty((n_keep, n_lm))
    gylm_k = np.empty((n_keep, 3, n_lm))
    u_k = np.empty((n_keep, 3))
    img_ok = np.zeros(n_keep, dtype=np.bool_)
    slot_species = np.empty(max_slots, dtype=np.int64)
    slot_count = np.empty(max_slots, dtype=np.int64)
    slot_start = np.empty(max_slots + 1, dtype=np.int64)
    slot_fill = np.empty(max_slots, dtype=np.int64)
    slot_imgs = np.empty(max_img, dtype=np.int64)
    # T of one pair (or image) per Cartesian component, flat over (n, q, l)
    ntq = n_max * nq * n_l
    tmat = np.empty((3, ntq))
    tk = np.empty((3, ntq))
    # per-species sums: of T over the neighbours (self block), of T r_b (strain)
    tsum = np.empty((n_species if do_grad else 0, 3, ntq))
    sum_used = np.zeros(n_species, dtype=np.bool_)
    tstr = np.empty((n_species if do_strain else 0, 6, ntq))
    str_used = np.zeros(n_species, dtype=np.bool_)
    # p . dp of a species-s neighbour as a dot product with T (see _adjoint)
    wdot = np.empty((n_species if do_grad else 0, ntq))
    w_done = np.zeros(n_species, dtype=np.bool_)
    ffi = np.empty(n_feat)
    coef = np.empty(n_feat)
    ab = np.empty((4, n_l * nq))
    c = np.empty((n_species, n_max, n_lm))
    ct = np.empty((n_lm, nq))
    g = np.empty((n_max, n_l))
    dg = np.empty((n_max, n_l))
    ylm = np.empty(n_lm)
    gylm = np.zeros((3, n_lm))
    cm = np.empty(l_max + 1)
    sm = np.empty(l_max + 1)
    plm = np.empty((l_max + 1, l_max + 1))
    dplm = np.empty((l_max + 1, l_max + 1))
    pfull = np.empty(n_l * nq * nq)
    p = np.empty(n_feat)
    gsum = np.empty(n_feat)
    s6 = np.empty((6, n_feat))

    for i in range(i_start, i_end):
        a0 = img_offsets[i]
        a1 = img_offsets[i + 1]
        n_slots = 0
        if do_grad:
            n_slots = pair_offsets[i + 1] - pair_offsets[i]
        c[:, :, :] = 0.0
        for s in range(n_species):
            str_used[s] = False
        for slot in range(n_slots):
            slot_species[slot] = -1
            slot_count[slot] = 0
        if do_grad:
            # images grouped by the atom they belong to (counting sort)
            for k in range(a0, a1):
                if img_slot[k] >= 0:
                    slot_count[img_slot[k]] += 1
            slot_start[0] = 0
            for slot in range(n_slots):
                slot_start[slot + 1] = slot_start[slot] + slot_count[slot]
                slot_fill[slot] = slot_start[slot]
            for k in range(a0, a1):
                sl = img_slot[k]
                if sl >= 0:
                    slot_imgs[slot_fill[sl]] = k
                    slot_fill[sl] += 1

        for k in range(a0, a1):
            if need_d:
                img_ok[k - a0] = False
            vx = img_vectors[k, 0]
            vy = img_vectors[k, 1]
            vz = img_vectors[k, 2]
            r = np.sqrt(vx * vx + vy * vy + vz * vz)
            if r >= r_cut or r == 0.0:
                continue
            inv_r = 1.0 / r
            ux = vx * inv_r
            uy = vy * inv_r
            uz = vz * inv_r
            _hermite(gtab, dgtab, h, r, g, dg)
            # Smooth cutoff applied analytically (a table knot would otherwise
            # have to sit on the kink of fc'' at r_cut - cutoff_width).
            if r > r_on:
                arg = np.pi * (r - r_on) / cutoff_width
                fc = 0.5 * (1.0 + np.cos(arg))
                dfc = -0.5 * np.pi / cutoff_width * np.sin(arg)
                for n in range(n_max):
                    for l in range(n_l):
                        dg[n, l] = dfc * g[n, l] + fc * dg[n, l]
                        g[n, l] = fc * g[n, l]
            _real_sph(ux, uy, uz, l_max, ylm_norm, need_d, ylm, gylm, cm, sm, plm, dplm)
            s = img_species[k]
            for n in range(n_max):
                for lm in range(n_lm):
                    c[s, n, lm] += g[n, l_of_lm[lm]] * ylm[lm]
            if not need_d:
                continue
            kk = k - a0
            img_ok[kk] = True
            u_k[kk, 0] = ux
            u_k[kk, 1] = uy
            u_k[kk, 2] = uz
            for n in range(n_max):
                for l in range(n_l):
                    g_k[kk, n, l] = g[n, l]
                    dg_k[kk, n, l] = dg[n, l]
            for lm in range(n_lm):
                ylm_k[kk, lm] = ylm[lm]
                gylm_k[kk, 0, lm] = gylm[0, lm] * inv_r
                gylm_k[kk, 1, lm] = gylm[1, lm] * inv_r
                gylm_k[kk, 2, lm] = gylm[2, lm] * inv_r
            if do_grad and img_slot[k] >= 0:
                slot_species[img_slot[k]] = s

        # Central-atom Gaussian: l = 0 only, constant in positions.
        sc = center_species[i]
        for n in range(n_max):
            c[sc, n, 0] += center_weight * gtab[0, n, 0] * y00

        # ct[lm, (b, n')] = c[b, n', lm]: contiguous (b, n') axis for the contractions.
        for b in range(n_species):
            for n2 in range(n_max):
                for lm in range(n_lm):
                    ct[lm, b * n_max + n2] = c[b, n2, lm]
        # Power spectrum P[l, (a, n), (b, n')].
        pfull[:] = 0.0
        for l in range(n_l):
            for lm in range(l * l, (l + 1) * (l + 1)):
                for an in range(nq):
                    cv = ct[lm, an]
                    off = (l * nq + an) * nq
                    for q in range(nq):
                        pfull[off + q] += cv * ct[lm, q]
        for f in range(n_feat):
            p[f] = feat_factor[f] * pfull[feat_index[f]]
        nrm = 1.0
        if normalize:
            ss = 0.0
            for f in range(n_feat):
                ss += p[f] * p[f]
            if ss > 0.0:
                nrm = np.sqrt(ss)
            for f in range(n_feat):
                p[f] /= nrm
        for f in range(n_feat):
            features[i, f] = p[f]
        if not need_d:
            continue
        inv = 1.0 / nrm
        for s in range(n_species):
            sum_used[s] = False
            w_done[s] = False
        for f in range(n_feat):
            ffi[f] = feat_factor[f] * inv
            coef[f] = feat_factor[f] * p[f]

        if do_strain:
            # Images without a pair slot (of the centre itself, or every image
            # when positions are not wanted) enter only the strain sums.
            for k in range(a0, a1):
                kk = k - a0
                if not img_ok[kk] or (do_grad and img_slot[k] >= 0):
                    continue
                s = img_species[k]
                _pair_tmat(g_k[kk], dg_k[kk], ylm_k[kk], gylm_k[kk], u_k[kk, 0], u_k[kk, 1],
                           u_k[kk, 2], ct, n_l, nq, n_max, ab, tk, False)
                _strain_add(tstr[s], str_used[s], tk, img_vectors[k], ntq)
                str_used[s] = True
        if do_grad:
            pb = pair_offsets[i]
            own = self_slot[i]
            for slot in range(n_slots):
                if slot == own:
                    continue
                s = slot_species[slot]
                out = pair_grad[pb + slot]
                if s < 0:
                    # only a coincident atom (r == 0) can leave a slot empty
                    out[:, :] = 0.0
                    continue
                # T summed over the atom's images; with strain each image's T
                # also goes, times its own r_b, into the strain sums.
                per_image = do_strain and slot_count[slot] > 1
                first = True
                for t in range(slot_start[slot], slot_start[slot + 1]):
                    k = slot_imgs[t]
                    kk = k - a0
                    if not img_ok[kk]:
                        continue
                    if per_image:
                        _pair_tmat(g_k[kk], dg_k[kk], ylm_k[kk], gylm_k[kk], u_k[kk, 0],
                                   u_k[kk, 1], u_k[kk, 2], ct, n_l, nq, n_max, ab, tk, False)
                        _strain_add(tstr[s], str_used[s], tk, img_vectors[k], ntq)
                        str_used[s] = True
                        if first:
                            tmat[:, :] = tk
                        else:
                            for al in range(3):
                                for x in range(ntq):
                                    tmat[al, x] += tk[al, x]
                    else:
                        _pair_tmat(g_k[kk], dg_k[kk], ylm_k[kk], gylm_k[kk], u_k[kk, 0],
                                   u_k[kk, 1], u_k[kk, 2], ct, n_l, nq, n_max, ab, tmat,
                                   not first)
                        if do_strain:
                            _strain_add(tstr[s], str_used[s], tmat, img_vectors[k], ntq)
                            str_used[s] = True
                    first = False
                # The self block is minus the sum of the others (translation
                # invariance); it is linear in T, so only T is summed here.
                ts = tsum[s]
                if sum_used[s]:
                    for al in range(3):
                        for x in range(ntq):
                            ts[al, x] += tmat[al, x]
                else:
                    ts[:, :] = tmat
                    sum_used[s] = True
                if normalize and not w_done[s]:
                    _adjoint(wdot[s], s, n_species, n_max, n_l, coef)
                    w_done[s] = True
                ws = wdot[s]
                for al in range(3):
                    pd = 0.0
                    if normalize:
                        tm = tmat[al]
                        dot = 0.0
                        for x in range(ntq):
                            dot += tm[x] * ws[x]
                        pd = dot * inv
                    _write_row(tmat[al], s, n_species, n_max, n_l, ffi, p, pd, out[al])
            out = pair_grad[pb + own]
            for al in range(3):
                gsum[:] = 0.0
                for s in range(n_species):
                    if sum_used[s]:
                        _assemble_add(tsum[s, al], s, n_species, n_max, n_l, feat_factor, gsum)
                pd = 0.0
                if normalize:
                    dot = 0.0
                    for f in range(n_feat):
                        dot += p[f] * gsum[f]
                    pd = dot * inv
                row = out[al]
                for f in range(n_feat):
                    row[f] = p[f] * pd - gsum[f] * inv
        if do_strain:
            s6[:, :] = 0.0
            for s in range(n_species):
                if not str_used[s]:
                    continue
                for vo in range(6):
                    _assemble_add(tstr[s, vo], s, n_species, n_max, n_l, feat_factor, s6[vo])
            # S_ab = sum_k dp/dr_k,a r_k,b is symmetric for a rotation-invariant
            # p, so the upper triangle (Voigt order xx yy zz yz xz xy) suffices.
            for vo in range(6):
                out6 = strain_grad[i, vo]
                s6v = s6[vo]
                if normalize:
                    dot = 0.0
                    for f in range(n_feat):
                        dot += p[f] * s6v[f]
                    for f in range(n_feat):
                        out6[f] = (s6v[f] - p[f] * dot) * inv
                else:
                    for f in range(n_feat):
                        out6[f] = s6v[f]


@numba.njit(cache=True, parallel=True)
def soap_kernel(
    img_offsets,
    img_species,
    img_vectors,
    img_slot,
    center_species,
    pair_offsets,
    self_slot,
    gtab,
    dgtab,
    h,
    r_cut,
    cutoff_width,
    center_weight,
    ylm_norm,
    l_of_lm,
    feat_index,
    feat_factor,
    n_species,
    do_grad,
    do_strain,
    normalize,
    features,
    pair_grad,
    strain_grad,
    n_chunks,
):
    """SOAP power spectrum of every centre, optionally with position and strain derivatives.

    Parameters
    ----------
    img_offsets : (n_centres + 1,) int64
        CSR offsets of neighbour images per centre.
    img_species : (n_images,) int64
        Species index of each neighbour image.
    img_vectors : (n_images, 3) float64
        Displacement r_j + shift - r_i, Å.
    img_slot : (n_images,) int64
        Local pair slot of the image's atom in the centre's block of
        ``pair_grad`` rows; -1 for periodic images of the centre itself.
    center_species : (n_centres,) int64
    pair_offsets : (n_centres + 1,) int64
        Block of ``pair_grad`` rows of each centre (used when ``do_grad``).
    self_slot : (n_centres,) int64
        Local slot of the (i, i) self term in the centre's block.
    gtab, dgtab : (n_knots, n_max, l_max + 1) float64
        Radial integral I_nl(r) (without the cutoff function) and dI_nl/dr
        on the uniform grid r_k = k h. G_nl = fc I_nl is formed here.
    h, r_cut, cutoff_width, center_weight : float
    ylm_norm : ((l_max + 1)^2,) float64
        Normalisation of the real spherical harmonics.
    l_of_lm : ((l_max + 1)^2,) int64
    feat_index : (F,) int64
        Position of each feature in the flattened P[l, a, n, b, n'] array.
    feat_factor : (F,) float64
        pi sqrt(8 / (2l + 1)), times sqrt(2) off the (a, n) == (b, n') diagonal.
    n_species : int
    do_grad, do_strain, normalize : bool
    features : (n_centres, F) float64, output
    pair_grad : (n_pairs, 3, F) float64, output (every row is written)
    strain_grad : (n_centres, 6, F) float64, output
    n_chunks : int
        Number of parallel tasks (a few per thread).
    """
    n_centres = center_species.shape[0]
    # Chunks of centres per task keep the parallel region small and let each
    # chunk reuse its scratch buffers. (numba.get_num_threads() is read by the
    # caller: calling it here would make the function uncacheable.)
    n_chunks = min(n_centres, max(n_chunks, 1))
    for ch in prange(n_chunks):
        _soap_centres(
            ch * n_centres // n_chunks,
            (ch + 1) * n_centres // n_chunks,
            img_offsets,
            img_species,
            img_vectors,
            img_slot,
            center_species,
            pair_offsets,
            self_slot,
            gtab,
            dgtab,
            h,
            r_cut,
            cutoff_width,
            center_weight,
            ylm_norm,
            l_of_lm,
            feat_index,
            feat_factor,
            n_species,
            do_grad,
            do_strain,
            normalize,
            features,
            pair_grad,
            strain_grad,
        )
