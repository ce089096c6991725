"""Models: which loaded model scores a tenant's events.

The routing table with its cache and loader (``table``), the registry watcher
(``watcher``) and the canary that checks a new version before it serves (``canary``).
"""
