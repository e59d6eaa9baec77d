"""The DMP boundary: IHE XDS.b (ITI-41, ITI-18, ITI-57) over SOAP 1.2/MTOM with mutual TLS, VIHF and XAdES.

`SoapDmpGateway` implements the core's `DmpGateway`; the other modules build and read the messages:
`metadata`/`entries` (ebRIM), `vihf` (SAML), `xades` (submission-set signature), `soap` (envelope,
MTOM), `responses` (faults, statuses), `identity` (PKCS#12, TLS context).
"""

from drimbox.dmp.gateway import SoapDmpGateway

__all__ = ["SoapDmpGateway"]
