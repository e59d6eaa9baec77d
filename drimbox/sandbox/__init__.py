"""Local stand-ins for what a demo or a test cannot reach: the demo PACS, Pro Santé Connect (OIDC),
the DMP (strict XDS.b over mutual TLS), a test PKI standing for IGC-Santé, made-up RIS messages.

Only the CLI and the tests import this package (an import-linter contract checks it).
"""
