"""drimbox: a DRIM-M node for a French radiology site.

The source side indexes the local PACS, publishes KOS manifests to the DMP and serves
images over DICOMweb; the consumer side fetches images published by other boxes.
"""

__version__ = "0.1.0"
