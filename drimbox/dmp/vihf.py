"""The VIHF: the SAML 2.0 assertion that tells the DMP who acts and for which patient (DRIM-M §4.6).

The box publishes on behalf of the report's author in "authentification indirecte": the structure
is authenticated by its ORG certificate (TLS and this signature), the professional is named by
RPPS, role and specialty. `subject-id` is the author's name; the DMP sample's patient name there
is a PoC bug.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureConstructionMethod, SignatureMethod
from signxml.signer import XMLSigner

from drimbox.config import DmpSettings, SiteSettings
from drimbox.dmp import codes
from drimbox.dmp.entries import invalid
from drimbox.dmp.identity import Identity
from drimbox.report.model import Code, Identifier, Report

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
HL7 = "urn:hl7-org:v3"
DS = "http://www.w3.org/2000/09/xmldsig#"
X509_SUBJECT_NAME = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
TLS_CLIENT = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
CONFIDENTIALITY_CODE = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"

_ROLE_CODE = re.compile(r"G15_(\w+?)(?:/(\w+))?")


class DmpSigner(XMLSigner):
    """signxml's signer, allowing SHA-1 only when the settings ask for rsa-sha1.

    signxml 5 refuses SHA-1 by default; the DMP sample and many DMP setups still expect it.
    """

    def __init__(self, algorithm: Literal["rsa-sha1", "rsa-sha256"]) -> None:
        self._sha1 = algorithm == "rsa-sha1"
        super().__init__(
            method=SignatureConstructionMethod.enveloped,
            signature_algorithm=SignatureMethod.RSA_SHA1 if self._sha1 else SignatureMethod.RSA_SHA256,
            digest_algorithm=DigestAlgorithm.SHA1 if self._sha1 else DigestAlgorithm.SHA256,
            c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
        )

    def check_deprecated_methods(self) -> None:
        if not self._sha1:
            super().check_deprecated_methods()  # type: ignore[no-untyped-call]


def signed_assertion(
    report: Report,
    patient: Identifier,
    settings: DmpSettings,
    site: SiteSettings,
    signer: Identity,
    *,
    flags: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> etree._Element:
    """The signed saml2:Assertion for one call about `patient` (an INS) on behalf of the report's author.

    Enveloped signature after the Issuer (SAML 2.0 schema order), exclusive c14n so the assertion
    stays valid once moved into the SOAP header. `flags` CONNEXION_SECRETE = Y adds the
    confidentiality-code the DMP knows (INVISIBLE_REPRESENTANTS_LEGAUX).
    """
    author = report.author
    if not author.id.extension:
        raise invalid("the report's author has no RPPS/ADELI identifier", "author/assignedAuthor/id")
    instant = _saml_time(now or datetime.now(UTC))
    assertion_id = f"_{uuid.uuid4()}"
    root = etree.Element(
        f"{{{SAML}}}Assertion",
        {"ID": assertion_id, "IssueInstant": instant, "Version": "2.0"},
        nsmap={"saml2": SAML, "xsi": XSI},
    )
    _sub(root, "Issuer", signer.subject_dn, Format=X509_SUBJECT_NAME)
    etree.SubElement(root, f"{{{DS}}}Signature", Id="placeholder", nsmap={"ds": DS})
    _sub(_sub(root, "Subject"), "NameID", author.id.extension)
    context = _sub(_sub(root, "AuthnStatement", AuthnInstant=instant), "AuthnContext")
    _sub(context, "AuthnContextClassRef", TLS_CLIENT)
    statement = _sub(root, "AttributeStatement")
    facility = report.facility_type.code if report.facility_type else settings.facility_type_code
    values: list[tuple[str, str | etree._Element]] = [
        ("VIHF_Version", "3.0"),
        ("Secteur_Activite", f"{facility}^{codes.FACILITY_TYPE_SYSTEM}"),
        ("Ressource_URN", "urn:dmp"),
        (SUBJECT_ID, f"{author.given} {author.family}".strip()),
        ("Identifiant_Structure", site.structure_id),
    ]
    if settings.lps_id:
        values.append(("LPS_ID", settings.lps_id))
    values += [
        ("LPS_Nom", settings.lps_name),
        ("LPS_ID_HOMOLOGATION_DMP", settings.homologation_id),
        ("LPS_Version", settings.lps_version),
        (RESOURCE_ID, f"{patient.extension}^^^&{patient.root}&ISO^NH"),
        ("Authentification_Mode", "INDIRECTE"),
        (
            PURPOSE_OF_USE,
            _ce("PurposeOfUse", Code("normal", codes.PURPOSE_OF_USE_SYSTEM, "Acces normal"), "mode acces VIHF 1.0"),
        ),
    ]
    values += [(ROLE, _ce("Role", role)) for role in professional_roles(report, settings.default_author_role)]
    if {k.upper(): v.strip().upper() for k, v in (flags or {}).items()}.get("CONNEXION_SECRETE") == "Y":
        values.append((CONFIDENTIALITY_CODE, _ce("ConfidentialityCode", codes.INVISIBLE_TO_GUARDIANS)))
    _attributes(statement, values)
    signed: etree._Element = DmpSigner(settings.signature_algorithm).sign(
        root, key=signer.key, cert=[signer.certificate]
    )
    return signed


def professional_roles(report: Report, default: str = "") -> tuple[Code, ...]:
    """The author's profession (TRE_G15) and specialty (TRE_R01) from the CDA code `G15_10/SM44`.

    `default` (`dmp.default_author_role`) stands in when the report's author has no such code. The
    display names come from the CDA's `Médecin - Radio-diagnostic (SM)` when it has that form.
    """
    role = report.author.role
    match = _ROLE_CODE.fullmatch(role.code) if role else None
    display = role.display if role is not None and match is not None else ""
    match = match or _ROLE_CODE.fullmatch(default)
    if match is None:
        raise invalid("the report's author has no profession code (G15_xx/SMyy)", "author/assignedAuthor/code")
    profession, specialty = match.groups()
    names = display.split(" - ", 1) if " - " in display else []
    roles = [
        Code(
            profession,
            codes.PROFESSION_SYSTEM,
            names[0] if names else codes.PROFESSION_NAMES.get(profession, profession),
        )
    ]
    if specialty:
        roles.append(Code(specialty, codes.SPECIALTY_SYSTEM, names[1] if names else specialty))
    return tuple(roles)


def _attributes(statement: etree._Element, values: list[tuple[str, str | etree._Element]]) -> None:
    """One saml2:Attribute per name, in order; repeated names (Role) share one Attribute."""
    current: etree._Element | None = None
    for name, value in values:
        if current is None or current.get("Name") != name:
            current = _sub(statement, "Attribute", Name=name)
        holder = _sub(current, "AttributeValue")
        if isinstance(value, str):
            holder.text = value
        else:
            holder.append(value)


def _ce(tag: str, code: Code, system_name: str = "") -> etree._Element:
    """An HL7 v3 CE value inside an AttributeValue, as the VIHF samples write PurposeOfUse and Role."""
    attributes = {
        "code": code.code,
        "codeSystem": code.system,
        "codeSystemName": system_name,
        "displayName": code.display,
        f"{{{XSI}}}type": "CE",
    }
    return etree.Element(f"{{{HL7}}}{tag}", attributes, nsmap={None: HL7, "xsi": XSI})


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attributes: str) -> etree._Element:
    node = etree.SubElement(parent, f"{{{SAML}}}{tag}", attributes)
    if text is not None:
        node.text = text
    return node


def _saml_time(moment: datetime) -> str:
    """xs:dateTime in UTC with milliseconds, as the samples: `2023-11-14T13:44:58.116Z`."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
