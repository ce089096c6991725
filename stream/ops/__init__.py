"""Operations: what the consumer says about itself.

Metrics and the HTTP endpoints (``metrics``), batch accounting (``accounting``), drift
(``drift``), logging (``logs``) and the one failure policy (``failures``).
"""
