"""CMS and S/MIME: decrypt, verify, sign, encrypt; trust anchors, CRLs, the recipient directory.

Pure functions on bytes. This package imports nothing of the gateway but ``errors`` (and
``config`` values): a failure is raised as a typed ``gateway.errors`` error carrying its reply.
"""
