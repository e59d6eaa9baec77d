"""Mutual TLS between DRIM-M boxes (DRIM-M A9): who may open a connection to our HTTP listener, and
to whom we open ours.

The listener does its own TLS handshake (`gate`) so that a peer OpenSSL refuses — no certificate,
expired, revoked, unknown CA — still reaches the audit trail, then checks what OpenSSL cannot: the
whitelist in force and OCSP. `server.MutualTlsServer` is what the daemon starts; `client.peer_client`
is what our outgoing calls to other boxes use. See docs/mutual-tls.md.
"""
