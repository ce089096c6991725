"""State: per-entity window state, with one owner.

The store (``store``), its binary form (``codec``) and keys (``keys``), the changelog
topic that makes it durable (``changelog``), and the keeper that restores, commits and
rolls it back with the batch (``keeper``).
"""
