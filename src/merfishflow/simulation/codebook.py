"""Constant-weight binary codebooks with a minimum Hamming distance (MERFISH MHD4 codes)."""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

from ..errors import InputError

# Enumerating every weight-w word is the simple, exact way to build the code;
# beyond this many candidates it gets too slow and the request is unusual.
_MAX_CANDIDATES = 2_000_000
_RESTARTS = 50


@lru_cache(maxsize=None)
def johnson_bound(n_bits: int, min_hamming_distance: int, weight: int) -> int:
    """Johnson upper bound on the size of a constant-weight code A(n, d, w).

    Parameters
    ----------
    n_bits : int
        Code length n.
    min_hamming_distance : int
        Minimum pairwise Hamming distance d.
    weight : int
        Number of ones per codeword w.

    Returns
    -------
    int
        No constant-weight code with these parameters has more codewords.
    """
    # Distances between equal-weight words are even: d and d+1 (odd) are the same constraint.
    delta = (min_hamming_distance + 1) // 2
    if weight < 0 or weight > n_bits:
        return 0
    if delta <= 1:
        return math.comb(n_bits, weight)
    if weight < delta:
        return 1
    return (n_bits * johnson_bound(n_bits - 1, min_hamming_distance, weight - 1)) // weight


def make_codebook(n_bits, n_codewords, weight=4, min_hamming_distance=4, seed=0):
    """Random constant-weight binary code with a guaranteed minimum Hamming distance.

    Candidates are the weight-``weight`` words whose set bits' 0-based indices
    XOR to the same value (a class in which two words sharing ``weight - 1``
    bits would share the last one too, so any two differ in at least 4 bits;
    for 16 bits and weight 4 the largest class is the optimal 140-word
    Steiner system), taken in random order first, then all other words;
    each is accepted greedily if it keeps the minimum distance. The result is
    a random subset in random row order, deterministic for the seed.

    Parameters
    ----------
    n_bits : int
        Codeword length.
    n_codewords : int
        Number of codewords (rows) wanted.
    weight : int, optional
        Number of ones per codeword.
    min_hamming_distance : int, optional
        Minimum Hamming distance between any two codewords.
    seed : int, optional
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    ndarray of uint8, shape (n_codewords, n_bits)
        One codeword per row, entries 0/1.

    Raises
    ------
    InputError
        If the arguments are out of range or no such code was found (the
        message gives the Johnson upper bound).
    """
    n_bits, n_codewords, weight, min_hamming_distance = (
        int(n_bits), int(n_codewords), int(weight), int(min_hamming_distance))
    if n_bits < 1:
        raise InputError(f"make_codebook: n_bits={n_bits} must be >= 1")
    if n_codewords < 1:
        raise InputError(f"make_codebook: n_codewords={n_codewords} must be >= 1")
    if not 1 <= weight <= n_bits:
        raise InputError(f"make_codebook: weight={weight} must be in 1..n_bits={n_bits}")
    if min_hamming_distance < 1:
        raise InputError(f"make_codebook: min_hamming_distance={min_hamming_distance} must be >= 1")
    n_candidates = math.comb(n_bits, weight)
    if n_candidates > _MAX_CANDIDATES:
        raise InputError(
            f"make_codebook: {n_candidates} candidate words for n_bits={n_bits}, weight={weight}; "
            f"at most {_MAX_CANDIDATES} are supported (lower the weight or the number of bits)"
        )
    bound = johnson_bound(n_bits, min_hamming_distance, weight)
    if n_codewords > bound:
        raise InputError(
            f"make_codebook: cannot make n_codewords={n_codewords} codewords of n_bits={n_bits}, "
            f"weight={weight} with min_hamming_distance={min_hamming_distance}: at most {bound} exist "
            "(Johnson bound); use fewer genes/blanks, more bits or a lower weight"
        )

    rng = np.random.default_rng(seed)
    combos = np.array(list(itertools.combinations(range(n_bits), weight)), dtype=np.int64)
    labels = np.bitwise_xor.reduce(combos, axis=1)
    sizes = np.bincount(labels)
    best = np.flatnonzero(sizes == sizes.max())
    words = np.zeros((n_candidates, n_bits), dtype=np.uint8)
    words[np.arange(n_candidates)[:, None], combos] = 1
    max_overlap = weight - (min_hamming_distance + 1) // 2  # shared ones allowed between two words
    # Greedy selection is not optimal: a few restarts in a new random order
    # (still deterministic for the seed) reach codes close to the bound.
    chosen = []
    for _ in range(_RESTARTS if n_candidates <= 20_000 else 2):
        in_class = labels == best[rng.integers(len(best))]
        order = np.concatenate([
            rng.permutation(np.flatnonzero(in_class)),
            rng.permutation(np.flatnonzero(~in_class)),
        ])
        chosen = _greedy(words, order, in_class, n_codewords, max_overlap,
                         class_is_valid=min_hamming_distance <= 4)
        if len(chosen) == n_codewords:
            break
    if len(chosen) < n_codewords:
        raise InputError(
            f"make_codebook: found only {len(chosen)} codewords of n_bits={n_bits}, weight={weight} with "
            f"min_hamming_distance={min_hamming_distance}, {n_codewords} requested (Johnson bound {bound}); "
            "use fewer genes/blanks or more bits"
        )
    return words[np.array(chosen)]


def _greedy(words, order, in_class, n_wanted, max_overlap, class_is_valid):
    """Indices of words accepted in ``order`` while every pair shares at most ``max_overlap`` ones."""
    chosen = []
    accepted = np.zeros((0, words.shape[1]), dtype=np.int32)
    for index in order:
        if len(chosen) == n_wanted:
            break
        # Words of the XOR class are pairwise distance >= 4 by construction.
        if not (class_is_valid and in_class[index]):
            overlap = accepted @ words[index].astype(np.int32)
            if overlap.size and overlap.max() > max_overlap:
                continue
        chosen.append(index)
        accepted = np.vstack([accepted, words[index].astype(np.int32)])
    return chosen


def codeword_names(n_genes, n_blanks):
    """``Gene-001``, ... then ``Blank-01``, ...: the codebook's gene_id column.

    Parameters
    ----------
    n_genes, n_blanks : int
        Numbers of real and blank barcodes.

    Returns
    -------
    list of str
    """
    gene_width = max(3, len(str(n_genes)))
    blank_width = max(2, len(str(n_blanks)))
    return [f"Gene-{i:0{gene_width}d}" for i in range(1, n_genes + 1)] + [
        f"Blank-{i:0{blank_width}d}" for i in range(1, n_blanks + 1)
    ]
