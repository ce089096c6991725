"""Types of the compiled forest walk (``_forest.pyx``)."""

import numpy as np

class Forest:
    def __init__(self, roots: np.ndarray, depths: np.ndarray, nodes: np.ndarray,
                 term: np.ndarray, center: np.ndarray, spread: np.ndarray) -> None: ...
    def depths(self, X: np.ndarray, out: np.ndarray) -> bool: ...
