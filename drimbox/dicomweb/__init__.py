"""DICOMweb for remote boxes and readers: QIDO-RS answered from the index (PS3.18 §10.6).

Routers only: the daemon mounts them under `dicomweb.prefix` and hands them the index and the
`authorize` dependency that turns a request into an `AccessScope`.
"""
