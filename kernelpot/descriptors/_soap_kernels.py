"""Numba kernels for the SOAP power spectrum and its derivatives.

Plain arrays in, plain arrays out; all validation, tabulation and allocation
happens in :mod:`kernelpot.descriptors.soap`. Index conventions:

* ``lm = l * l + l + m`` for real spherical harmonics, ``m = -l..l``;
* density coefficients ``c[species, n, lm]``;
* density derivatives of one neighbour atom in one contiguous block
  ``D[lm, alpha * n_max + n]`` (3 n_max rows); strain rows of the images that
  need them (images of the centre, atoms seen through several images) in
  ``D[lm, voigt * n_max + n]`` per species. Contracting a block with ``c``
  gives ``T[(l, b, n'), row] = sum_m D[lm, row] c[b, n', lm]``, from which
  every feature derivative of that neighbour is assembled.

Per neighbour pair the work is: the coefficients (n_max (l_max+1)^2
multiply-adds), their gradients (3 n_max (l_max+1)^2 x 2), the contraction
(3 n_max (l_max+1)^2 n_species n_max) and the assembly, normalisation and one
write of the 3 F-long output rows. Every output row is written exactly once,
and the per-centre scratch that is cleared is O(n_species n_max (l_max+1)^2).
"""

import numba
import numpy as np
from numba import prange


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
def _density_derivative(g, dg, ylm, gylm, ux, uy, uz, inv_r, l_of_lm, n_max, out, accumulate):
    """d c_{nlm} / d r_ij = G' u Y + G grad Y / r into ``out[lm, alpha * n_max + n]``.

    ``accumulate`` adds instead of writing: only atoms seen through several
    periodic images need it, so the usual single-image pair is written once.
    """
    n_lm = ylm.shape[0]
    gx = gylm[0]
    gy = gylm[1]
    gz = gylm[2]
    for lm in range(n_lm):
        l = l_of_lm[lm]
        y = ylm[lm]
        ax = gx[lm] * inv_r
        ay = gy[lm] * inv_r
        az = gz[lm] * inv_r
        row = out[lm]
        if accumulate:
            for n in range(n_max):
                gl = g[n, l]
                dgl = dg[n, l] * y
                row[n] += dgl * ux + gl * ax
                row[n_max + n] += dgl * uy + gl * ay
                row[2 * n_max + n] += dgl * uz + gl * az
        else:
            for n in range(n_max):
                gl = g[n, l]
                dgl = dg[n, l] * y
                row[n] = dgl * ux + gl * ax
                row[n_max + n] = dgl * uy + gl * ay
                row[2 * n_max + n] = dgl * uz + gl * az


@numba.njit(cache=True, inline="always")
def _contract(blk, n_rows, ct, n_l, nq, tmat):
    """``tmat[l * nq + q, r] = sum_m blk[lm, r] ct[lm, q]`` for the first ``n_rows`` columns.

    The first m of each l writes, so ``tmat`` needs no clearing; two m per
    pass halve the loads and stores of the (L1-resident) ``tmat`` row.
    """
    for l in range(n_l):
        lm0 = l * l
        lm_end = lm0 + 2 * l + 1
        for q in range(nq):
            trow = tmat[l * nq + q]
            c0 = ct[lm0, q]
            b0 = blk[lm0]
            for r in range(n_rows):
                trow[r] = c0 * b0[r]
            lm = lm0 + 1
            while lm + 1 < lm_end:
                c1 = ct[lm, q]
                c2 = ct[lm + 1, q]
                b1 = blk[lm]
                b2 = blk[lm + 1]
                for r in range(n_rows):
                    trow[r] += c1 * b1[r] + c2 * b2[r]
                lm += 2
            if lm < lm_end:
                c1 = ct[lm, q]
                b1 = blk[lm]
                for r in range(n_rows):
                    trow[r] += c1 * b1[r]


@numba.njit(cache=True, inline="always")
def _assemble(tmat, col, s, n_species, n_max, n_l, feat_factor, p, gout):
    """Derivative of every feature for the derivative rows ``col .. col + n_max`` of species s.

    ``tmat[l * nq + b * n_max + n', col + n]`` holds sum_m D[lm, n] c[b, n', lm].
    Features are produced in their storage order (a <= b, n, n' [>= n if
    a == b], l) with d p = [a == s] T[n; b, n'] + [b == s] T[n'; a, n], times
    the prefactor. Species pairs without s are exactly zero. Returns the dot
    product of the derivative with ``p`` (for the normalisation chain rule).
    """
    dot = 0.0
    nq = n_species * n_max
    f = 0
    for a in range(n_species):
        for b in range(a, n_species):
            if a != s and b != s:
                cnt = (n_max * (n_max + 1) // 2 if a == b else n_max * n_max) * n_l
                for k in range(cnt):
                    gout[f + k] = 0.0
                f += cnt
                continue
            for n in range(n_max):
                n2_start = n if a == b else 0
                for n2 in range(n2_start, n_max):
                    if a == s and b == s:
                        for l in range(n_l):
                            v = feat_factor[f + l] * (
                                tmat[l * nq + b * n_max + n2, col + n]
                                + tmat[l * nq + a * n_max + n, col + n2]
                            )
                            gout[f + l] = v
                            dot += p[f + l] * v
                    elif a == s:
                        for l in range(n_l):
                            v = feat_factor[f + l] * tmat[l * nq + b * n_max + n2, col + n]
                            gout[f + l] = v
                            dot += p[f + l] * v
                    else:
                        for l in range(n_l):
                            v = feat_factor[f + l] * tmat[l * nq + a * n_max + n, col + n2]
                            gout[f + l] = v
                            dot += p[f + l] * v
                    f += n_l
    return dot


_VOIGT_A = (0, 1, 2, 1, 0, 0)
_VOIGT_B = (0, 1, 2, 2, 2, 1)


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
    coefficients c and writes each neighbour's density derivative into its own
    contiguous block ``dcs[slot, lm, (alpha, n)]`` (written, not accumulated,
    unless the atom is seen through several images); (2) the power spectrum
    and its norm; (3) per neighbour, the contraction with c into a small
    L1-resident ``tmat`` and the assembly of its three feature rows, written
    once to ``pair_grad`` with the normalisation applied. The self block is
    minus the sum of the other blocks (translation invariance), accumulated
    from the rows as they are written.
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
    r3 = 3 * n_max  # derivative rows of one block: (alpha, n)
    r6 = 6 * n_max  # strain rows of one species: (voigt, n)

    # Scratch sized for the largest centre of this range, allocated once per
    # chunk: per-centre allocation churns the allocator and page-faults.
    max_slots = 0
    if do_grad:
        for i in range(i_start, i_end):
            max_slots = max(max_slots, pair_offsets[i + 1] - pair_offsets[i])
    dcs = np.empty((max_slots, n_lm, r3))
    dstr = np.empty((n_species if do_strain else 0, n_lm, r6))
    str_used = np.zeros(n_species, dtype=np.bool_)
    dcl = np.empty((n_lm, r3))
    tmat = np.empty((n_l * nq, r6 if do_strain else r3))
    slot_species = np.empty(max_slots, dtype=np.int64)
    slot_count = np.empty(max_slots, dtype=np.int64)
    slot_vec = np.empty((max_slots, 3))
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
    gout = np.empty(n_feat)
    gself = np.empty((3, n_feat))
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
            for k in range(a0, a1):
                sl = img_slot[k]
                if sl >= 0:
                    slot_count[sl] += 1
                    slot_vec[sl, 0] = img_vectors[k, 0]
                    slot_vec[sl, 1] = img_vectors[k, 1]
                    slot_vec[sl, 2] = img_vectors[k, 2]

        for k in range(a0, a1):
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
            slot = img_slot[k] if do_grad else -1
            if slot >= 0 and slot_count[slot] == 1:
                # the common case: one image, one block, written once
                slot_species[slot] = s
                _density_derivative(g, dg, ylm, gylm, ux, uy, uz, inv_r, l_of_lm, n_max, dcs[slot],
                                    False)
                continue
            # Several images of one atom, or an image of the centre itself: the
            # strain rows collect them (an atom seen through a single image gets
            # its strain term from its position derivative, d p / d r_ij,a * r_ij,b).
            _density_derivative(g, dg, ylm, gylm, ux, uy, uz, inv_r, l_of_lm, n_max, dcl, False)
            if slot >= 0:
                first = slot_species[slot] < 0
                slot_species[slot] = s
                blk = dcs[slot]
                if first:
                    for lm in range(n_lm):
                        for r in range(r3):
                            blk[lm, r] = dcl[lm, r]
                else:
                    for lm in range(n_lm):
                        for r in range(r3):
                            blk[lm, r] += dcl[lm, r]
            if do_strain:
                ds = dstr[s]
                if not str_used[s]:
                    ds[:, :] = 0.0
                    str_used[s] = True
                for vo in range(6):
                    al = _VOIGT_A[vo]
                    be = _VOIGT_B[vo]
                    vb = vx if be == 0 else (vy if be == 1 else vz)
                    for lm in range(n_lm):
                        for n in range(n_max):
                            ds[lm, vo * n_max + n] += dcl[lm, al * n_max + n] * vb

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

        if do_strain:
            s6[:, :] = 0.0
        if do_grad:
            gself[:, :] = 0.0
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
                _contract(dcs[slot], r3, ct, n_l, nq, tmat)
                single = do_strain and slot_count[slot] == 1
                for al in range(3):
                    dot = _assemble(tmat, al * n_max, s, n_species, n_max, n_l, feat_factor, p, gout)
                    if single:
                        for vo in range(6):
                            if _VOIGT_A[vo] == al:
                                vb = slot_vec[slot, _VOIGT_B[vo]]
                                s6v = s6[vo]
                                for f in range(n_feat):
                                    s6v[f] += gout[f] * vb
                    # normalisation chain rule (I - p p^T) / |p|, fused with the one store
                    pd = dot * inv if normalize else 0.0
                    row = out[al]
                    gs = gself[al]
                    for f in range(n_feat):
                        v = gout[f] * inv - p[f] * pd
                        row[f] = v
                        gs[f] -= v
            out = pair_grad[pb + own]
            for al in range(3):
                for f in range(n_feat):
                    out[al, f] = gself[al, f]
        if do_strain:
            for s in range(n_species):
                if not str_used[s]:
                    continue
                _contract(dstr[s], r6, ct, n_l, nq, tmat)
                for vo in range(6):
                    _assemble(tmat, vo * n_max, s, n_species, n_max, n_l, feat_factor, p, gout)
                    s6v = s6[vo]
                    for f in range(n_feat):
                        s6v[f] += gout[f]
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
