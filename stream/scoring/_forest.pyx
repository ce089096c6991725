# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Compiled walk of a whole isolation forest: every row down every tree in one call.

Built by ``pip install`` from this file (Cython); ``stream.scoring.scorers`` uses it when it
imports and falls back to numpy and sklearn's ``Tree.apply`` when it does not.
The arithmetic is the fallback's, in the same order: the scaler's float64
``(x - mean) / scale`` rounded to float32, a float32 value compared with the
split as sklearn's ``Tree.apply`` compares them, and per row the trees' path
terms added tree by tree starting from 0.0, so the sums are the same floats
(no fast-math; ``stream.scoring.scorers`` proves the scorer identical at load).
"""

from libc.stdlib cimport free, malloc

cdef enum:
    # Rows walked side by side: their node loads are independent, so the CPU overlaps
    # them instead of waiting on one dependent load per tree level.
    BLOCK = 16


cdef packed struct Node:
    # One node in 16 bytes, so one cache line serves the whole step.
    float threshold
    int feature
    int child[2]


cdef class Forest:
    """A fitted forest's nodes, scaler and path terms, held for repeated calls.

    ``nodes``: all trees' nodes in one flat array; ``child[0]`` is the left child
    and ``child[1]`` the right one, and a leaf is its own child with an infinite
    threshold, so every row takes exactly ``depths[k]`` branch-free steps down
    tree ``k``. ``threshold`` is each float64 split rounded down to float32,
    which sends every float32 value the same way (``x <= t`` exactly when
    ``x <= float32_floor(t)``). An empty ``center`` or ``spread`` skips that
    step of the scaler (no centring, no scaling).
    """

    cdef const int[::1] roots
    cdef const int[::1] tree_depths
    cdef const Node[::1] nodes
    cdef const double[::1] term
    cdef const double[::1] center
    cdef const double[::1] spread

    def __init__(self, const int[::1] roots, const int[::1] depths, const Node[::1] nodes,
                 const double[::1] term, const double[::1] center,
                 const double[::1] spread) -> None:
        self.roots, self.tree_depths, self.nodes = roots, depths, nodes
        self.term, self.center, self.spread = term, center, spread

    def depths(self, const double[:, ::1] X, double[::1] out) -> bool:
        """Sum of path terms per row of ``X`` into ``out``; False (``out`` unset) at a NaN."""
        cdef Py_ssize_t n = X.shape[0], f = X.shape[1]
        cdef float* Z = <float*>malloc(max(n * f, 1) * sizeof(float))
        cdef bint ok
        if Z == NULL:
            raise MemoryError()
        try:
            with nogil:
                ok = self._scale(X, Z)
                if ok and n < BLOCK:
                    self._walk_trees_side_by_side(Z, n, f, out)
                elif ok:
                    self._walk(Z, n, f, out)
        finally:
            free(Z)
        return ok

    cdef bint _scale(self, const double[:, ::1] X, float* Z) noexcept nogil:
        cdef Py_ssize_t n = X.shape[0], f = X.shape[1], i, j
        cdef bint centre = self.center.shape[0] > 0, scale = self.spread.shape[0] > 0
        cdef double v
        for i in range(n):
            for j in range(f):
                v = X[i, j]
                if v != v:
                    return False
                if centre:
                    v = v - self.center[j]
                if scale:
                    v = v / self.spread[j]
                Z[i * f + j] = <float>v
        return True

    cdef void _walk(self, const float* Z, Py_ssize_t n, Py_ssize_t f,
                    double[::1] out) noexcept nogil:
        # Trees are the outer loop so that one tree's nodes stay in cache while
        # every row walks it; the sum per row still goes tree by tree from 0.0.
        cdef Py_ssize_t i, k, r, b, step
        cdef int node[BLOCK]
        cdef int root
        cdef const Node* nd
        for i in range(n):
            out[i] = 0.0
        for k in range(self.roots.shape[0]):
            root = self.roots[k]
            i = 0
            while i < n:
                b = n - i if n - i < BLOCK else BLOCK
                for r in range(b):
                    node[r] = root
                for step in range(self.tree_depths[k]):
                    for r in range(b):
                        nd = &self.nodes[node[r]]
                        node[r] = nd.child[Z[(i + r) * f + nd.feature] > nd.threshold]
                for r in range(b):
                    out[i + r] += self.term[node[r]]
                i += b

    cdef void _walk_trees_side_by_side(self, const float* Z, Py_ssize_t n, Py_ssize_t f,
                                       double[::1] out) noexcept nogil:
        # Too few rows to overlap (a tenant with a handful of events in a batch):
        # walk BLOCK trees at once per row instead, then add their terms in tree order.
        cdef Py_ssize_t i, k, t, b, step, steps
        cdef Py_ssize_t n_trees = self.roots.shape[0]
        cdef int node[BLOCK]
        cdef const Node* nd
        cdef const float* row
        cdef double acc
        for i in range(n):
            row = Z + i * f
            acc = 0.0
            k = 0
            while k < n_trees:
                b = n_trees - k if n_trees - k < BLOCK else BLOCK
                steps = 0
                for t in range(b):
                    node[t] = self.roots[k + t]
                    if self.tree_depths[k + t] > steps:
                        steps = self.tree_depths[k + t]
                # Extra steps past a shallower tree's depth stay on its leaf.
                for step in range(steps):
                    for t in range(b):
                        nd = &self.nodes[node[t]]
                        node[t] = nd.child[row[nd.feature] > nd.threshold]
                for t in range(b):
                    acc += self.term[node[t]]
                k += b
            out[i] = acc
