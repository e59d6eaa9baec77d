"""Presentation contexts: which SOP classes and transfer syntaxes we offer and accept.

As a C-STORE SCP we accept every storage SOP class pynetdicom knows (170, Breast Tomosynthesis
and the other multi-frame classes included) in every transfer syntax: lossless compressed first,
then uncompressed, lossy last (pynetdicom picks in its own list order; we want the PACS's
stored encoding, and never a lossy conversion). As a C-GET SCU we propose one context per SOP
class actually in the study (at most 128 per association, PS3.8 §9.3.2.2), stored syntax first
(decisions: C-GET contexts).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import StoragePresentationContexts, build_context, build_role
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES

MAX_CONTEXTS = 128

VERIFICATION = UID("1.2.840.10008.1.1")
FIND_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root Query/Retrieve - FIND
MOVE_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.2")  # Study Root Query/Retrieve - MOVE
GET_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.3")  # Study Root Query/Retrieve - GET

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]

LOSSLESS = [
    UID("1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    UID("1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    UID("1.2.840.10008.1.2.4.70"),  # JPEG lossless SV1
    UID("1.2.840.10008.1.2.4.57"),  # JPEG lossless
    UID("1.2.840.10008.1.2.5"),  # RLE lossless
    UID("1.2.840.10008.1.2.4.201"),  # HTJ2K lossless
    UID("1.2.840.10008.1.2.4.202"),  # HTJ2K lossless RPCL
]

LOSSY = [
    UID("1.2.840.10008.1.2.4.91"),  # JPEG 2000
    UID("1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    UID("1.2.840.10008.1.2.4.50"),  # JPEG baseline
    UID("1.2.840.10008.1.2.4.51"),  # JPEG extended
    UID("1.2.840.10008.1.2.4.203"),  # HTJ2K
    UID("1.2.840.10008.1.2.4.100"),  # MPEG2 MP@ML
    UID("1.2.840.10008.1.2.4.101"),  # MPEG2 MP@HL
    UID("1.2.840.10008.1.2.4.102"),  # MPEG-4 AVC/H.264 HP4.1
    UID("1.2.840.10008.1.2.4.103"),  # MPEG-4 AVC/H.264 BD
    UID("1.2.840.10008.1.2.4.104"),  # MPEG-4 AVC/H.264 HP4.2 2D
    UID("1.2.840.10008.1.2.4.105"),  # MPEG-4 AVC/H.264 HP4.2 3D
    UID("1.2.840.10008.1.2.4.106"),  # MPEG-4 AVC/H.264 Stereo
    UID("1.2.840.10008.1.2.4.107"),  # HEVC/H.265 Main
    UID("1.2.840.10008.1.2.4.108"),  # HEVC/H.265 Main 10
]

#: What we accept as an SCP, in preference order: a lossless compressed encoding (as a PACS
#: that compresses stores it), then uncompressed, and lossy last, so that a sender offering both
#: is never made to compress lossily what it holds losslessly.
SCP_TRANSFER_SYNTAXES: list[str | UID] = [*LOSSLESS, *UNCOMPRESSED, *LOSSY]

STORAGE_SOP_CLASSES: list[str] = [str(uid) for uid in _STORAGE_CLASSES.values()]

#: pynetdicom's selection of the 120 most used storage classes (MG, DBT and CT included): what a
#: C-GET offers when the PACS does not say which classes a study holds.
COMMON_STORAGE_SOP_CLASSES: list[str] = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]


def retrieve_syntaxes(stored: Iterable[str]) -> list[str | UID]:
    """The syntaxes we list for one SOP class in C-GET: those the PACS stores first, then
    uncompressed and lossless ones. Lossy syntaxes only when the PACS stores them so: an acceptor
    picks from our list, and must never pick a lossy conversion of a lossless original."""
    first: list[str | UID] = [s for s in stored if s in SCP_TRANSFER_SYNTAXES]
    rest = [s for s in UNCOMPRESSED + LOSSLESS if s not in first]
    return first + rest


def cget_storage_contexts(
    sop_classes: dict[str, set[str]],
) -> tuple[list[PresentationContext], list[SCP_SCU_RoleSelectionNegotiation]]:
    """Contexts and SCP/SCU role selections for the storage sub-operations of a C-GET.

    `sop_classes` maps each SOP class in the study to the transfer syntaxes seen for it. At most
    127 SOP classes fit beside the query model's own context; more would need a second C-GET.
    """
    if len(sop_classes) > MAX_CONTEXTS - 1:
        raise ValueError(f"{len(sop_classes)} SOP classes in one study: more than one association holds")
    contexts = []
    roles = []
    for sop_class, stored in sorted(sop_classes.items()):
        contexts.append(build_context(sop_class, retrieve_syntaxes(sorted(stored))))
        roles.append(build_role(sop_class, scp_role=True))
    return contexts, roles
