"""Reading the signed `ListeBlancheDRIM-M` document (namespace https://github.com/ansforge/DRIM-M_DATA)."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from lxml import etree

from drimbox.errors import WhitelistRefused
from drimbox.whitelist.model import Domain, Whitelist

NS = "https://github.com/ansforge/DRIM-M_DATA"
ROOT = f"{{{NS}}}ListeBlancheDRIM-M"

log = logging.getLogger(__name__)


def read_whitelist(root: etree._Element, data: bytes, signer: str) -> Whitelist:
    """The model of a list whose signature has been checked (`root` is the signed tree)."""
    if root.tag != ROOT:
        raise WhitelistRefused(f"not a DRIM-M whitelist: root element {root.tag!r}")
    version = root.get("versionFormat", "")
    if not version.startswith("1."):
        log.warning("unexpected whitelist format version", extra={"event": "whitelist.format", "version": version})
    generated = _timestamp(_text(root, "DateDeGeneration"))
    if generated is None:
        raise WhitelistRefused("the list has no readable DateDeGeneration")
    domains = tuple(_domain(node) for node in root.iterfind(f"{{{NS}}}ListeDomaines/{{{NS}}}Domaine"))
    if not domains:
        raise WhitelistRefused("the list has no Domaine")
    return Whitelist(generated_at=generated, domains=domains, digest=hashlib.sha256(data).hexdigest(), signer=signer)


def _domain(node: etree._Element) -> Domain:
    return Domain(
        identifier=_text(node, "Identifiant"),
        db=_text(node, "db"),
        vi=_text(node, "vi"),
        denomination=_text(node, "Denomination"),
        operator_dn=_text(node, "DNCertificatOperateur"),
        support_contact=_text(node, "SupportContact"),
        updated_at=_timestamp(_text(node, "DateMAJ")),
    )


def _text(parent: etree._Element, name: str) -> str:
    child = parent.find(f"{{{NS}}}{name}")
    return "" if child is None else "".join(child.itertext()).strip()


def _timestamp(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
