"""Local stand-ins for what a demo or a test cannot reach: a demo PACS now; DMP, PSC, PKI later.

Only the CLI and the tests import this package (an import-linter contract checks it).
"""
