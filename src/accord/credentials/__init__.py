"""Credentials shared by every networked driver: a local CA, TLS certificates, tokens,
revocations, and the check a listening process makes on every client.

Layout::

    naming.py   what a node id or party name may be (the certificate's common name)
    auth.py     reading credentials folders; :class:`~accord.credentials.auth.Authenticator`
    issue.py    making the CA, certificates and tokens (``accord certs``, ``--renew``)
    tls.py      gRPC TLS credentials, bearer-token metadata, channel options

``accord.federation`` (nodes dialling a server) and ``accord.vertical`` (feature parties
dialling the label party) both read and check credentials through this package; neither
imports the other. Importing it loads neither gRPC nor ``cryptography``.
"""

from __future__ import annotations
