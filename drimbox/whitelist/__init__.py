"""The ANS whitelist of DRIM-M boxes (DRIM-M §4.12, rule A9).

`verify_whitelist` turns downloaded bytes into a `Whitelist` only if the XAdES signature verifies
and its signer is the ANS's "Liste Blanche DRIM-M" certificate under the configured IGC-Santé root;
`WhitelistKeeper` keeps the list in force and refreshes it; the TLS code asks `current()` whether a
peer's certificate DN (`dn_of`) or a Retrieve host is listed.
"""

from drimbox.whitelist.keeper import RefreshResult, WhitelistKeeper
from drimbox.whitelist.model import Domain, Whitelist, dn_of
from drimbox.whitelist.report import format_status
from drimbox.whitelist.signature import verify_whitelist

__all__ = ["Domain", "RefreshResult", "Whitelist", "WhitelistKeeper", "dn_of", "format_status", "verify_whitelist"]
