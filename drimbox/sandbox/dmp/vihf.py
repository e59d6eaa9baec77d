"""The VIHF: the signed SAML 2.0 assertion in `wsse:Security` that says who asks the DMP (DRIM-M §4.6).

Checked in this order, each failure a WS-Security fault: one Security header with one Assertion
(InvalidSecurity), Version 2.0 with ID and IssueInstant (InvalidSecurityToken), an enveloped
exc-c14n signature over the whole assertion with accepted algorithms (InvalidSecurity,
UnsupportedAlgorithm), a signing certificate from KeyInfo chaining to the CA and not revoked
(FailedAuthentication), the signature itself (FailedCheck, verified with signxml on a certificate
already trusted), the Issuer DN equal to that certificate's subject, and the attributes, read from
what signxml returns as signed — never from the unverified tree. Finally the structure id: the OU
of the signing certificate and of the TLS client certificate must both equal Identifiant_Structure.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature, SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from drimbox.sandbox.dmp.answers import Fault
from drimbox.sandbox.dmp.ebxml import DS, HL7, SAML, XSI, Element, parse_xml, q, text
from drimbox.sandbox.dmp.envelope import Envelope
from drimbox.sandbox.dmp.trust import Trust, check_structure, failed_authentication, name_pairs, subject_pairs

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
AUTHENTICATION_MODES = frozenset({"INDIRECTE", "INDIRECTE_RENFORCEE", "DIRECTE"})
ROLE_SYSTEMS = frozenset({"1.2.250.1.71.1.2.7", "1.2.250.1.71.4.2.5"})  # TRE_G15 professions, TRE_R01 savoir-faire
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
X509_SUBJECT = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
_REQUIRED = (
    *("VIHF_Version", "Secteur_Activite", "Ressource_URN", SUBJECT_ID, "Identifiant_Structure", "LPS_Nom"),
    *("LPS_ID_HOMOLOGATION_DMP", "Authentification_Mode", RESOURCE_ID),
)


@dataclass(frozen=True)
class Algorithms:
    """XML signature algorithms the sandbox accepts (URIs); the DMP still takes RSA-SHA1 (§4.6)."""

    signature: frozenset[str] = frozenset({RSA_SHA1, RSA_SHA256})
    digest: frozenset[str] = frozenset({SHA1, SHA256})

    def config(self, **changes: object) -> SignatureConfiguration:
        return SignatureConfiguration(
            signature_methods=frozenset(SignatureMethod(uri) for uri in self.signature),
            digest_algorithms=frozenset(DigestAlgorithm(uri) for uri in self.digest),
            **changes,  # type: ignore[arg-type]
        )


class Verifier(XMLVerifier):
    """signxml's verifier with a correct inclusive C14N of a subtree.

    libxml2 2.14 (lxml 6.1.3 bundles 2.14.6) writes `xmlns=""` on the grandchildren of a subtree
    whose default namespace is declared above it, so the SignedInfo of an enveloping XAdES
    (`<Signature xmlns="…xmldsig#"><SignedInfo>…`) canonicalises wrongly and a correct signature
    fails. Serialising the subtree alone first (lxml then declares every in-scope namespace on it,
    as C14N 1.0 wants on the apex of a document subset) and canonicalising that gives the right
    bytes. Exclusive C14N is not affected.
    """

    def _c14n(self, nodes: Any, algorithm: CanonicalizationMethod, inclusive_ns_prefixes: Any = None) -> bytes:
        if not algorithm.name.startswith("EXCLUSIVE"):
            items = nodes if isinstance(nodes, list) else [nodes]
            nodes = [parse_xml(etree.tostring(node, with_tail=False)) for node in items]
        return bytes(super()._c14n(nodes, algorithm, inclusive_ns_prefixes=inclusive_ns_prefixes))


@dataclass(frozen=True)
class Vihf:
    """What the sandbox keeps of a verified VIHF."""

    structure_id: str
    resource_id: str
    name_id: str
    authentication_mode: str
    signer: x509.Certificate


def check_vihf(envelope: Envelope, trust: Trust, algorithms: Algorithms, tls_cert: x509.Certificate) -> Vihf:
    if len(envelope.security) != 1:
        raise _invalid("un et un seul en-tête wsse:Security est attendu")
    assertions = envelope.security[0].findall(q(SAML, "Assertion"))
    if len(assertions) != 1:
        raise _invalid("wsse:Security doit contenir une et une seule saml2:Assertion (VIHF)")
    assertion = assertions[0]
    assertion_id = assertion.get("ID", "")
    if assertion.get("Version") != "2.0" or not assertion_id or not _instant(assertion.get("IssueInstant", "")):
        raise _token("VIHF : Version 2.0, ID et IssueInstant sont obligatoires")
    issuer = assertion.find(q(SAML, "Issuer"))
    if issuer is None or issuer.get("Format") != X509_SUBJECT or not text(issuer):
        raise _invalid(f"VIHF : saml2:Issuer au format {X509_SUBJECT} attendu")
    signer = _signer(assertion, assertion_id, trust, algorithms)
    signed = _verify(assertion, assertion_id, signer, algorithms)
    try:
        same_issuer = name_pairs(text(issuer)) == subject_pairs(signer.subject)
    except ValueError:
        same_issuer = False
    if not same_issuer:
        raise failed_authentication("VIHF : l'Issuer n'est pas le sujet du certificat de signature")
    vihf = _attributes(signed, signer)
    check_structure(signer, vihf.structure_id, "de signature du VIHF")
    check_structure(tls_cert, vihf.structure_id, "d'authentification TLS")
    return vihf


def _signer(assertion: Element, assertion_id: str, trust: Trust, algorithms: Algorithms) -> x509.Certificate:
    signature = assertion.find(q(DS, "Signature"))
    if signature is None:
        raise _invalid("VIHF non signé (ds:Signature enveloppée attendue dans l'assertion)")
    c14n = signature.find(f"{q(DS, 'SignedInfo')}/{q(DS, 'CanonicalizationMethod')}")
    references = signature.findall(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}")
    if c14n is None or c14n.get("Algorithm") != EXC_C14N or len(references) != 1:
        raise _invalid("VIHF : SignedInfo en exc-c14n avec une seule référence attendu")
    transforms = [t.get("Algorithm") for t in references[0].iterfind(f"{q(DS, 'Transforms')}/{q(DS, 'Transform')}")]
    if references[0].get("URI") != f"#{assertion_id}" or transforms != [ENVELOPED, EXC_C14N]:
        raise _invalid("VIHF : la référence doit viser l'assertion entière (enveloped-signature puis exc-c14n)")
    method = signature.find(f"{q(DS, 'SignedInfo')}/{q(DS, 'SignatureMethod')}")
    digest = references[0].find(q(DS, "DigestMethod"))
    if method is None or method.get("Algorithm") not in algorithms.signature:
        raise Fault("wsse:UnsupportedAlgorithm", "VIHF : algorithme de signature non accepté")
    if digest is None or digest.get("Algorithm") not in algorithms.digest:
        raise Fault("wsse:UnsupportedAlgorithm", "VIHF : algorithme d'empreinte non accepté")
    return trust.verify_chain(key_info_chain(signature, "VIHF"))


def key_info_chain(signature: Element, what: str) -> list[x509.Certificate]:
    """The certificates of `ds:KeyInfo/ds:X509Data`, signing certificate first."""
    chain = []
    for element in signature.iterfind(f"{q(DS, 'KeyInfo')}/{q(DS, 'X509Data')}/{q(DS, 'X509Certificate')}"):
        try:
            chain.append(x509.load_der_x509_certificate(base64.b64decode("".join(text(element).split()))))
        except (binascii.Error, ValueError):
            raise _invalid(f"{what} : certificat X509Certificate illisible") from None
    if not chain:
        raise _invalid(f"{what} : ds:KeyInfo/ds:X509Data/ds:X509Certificate absent")
    return chain


def _verify(assertion: Element, assertion_id: str, signer: x509.Certificate, algorithms: Algorithms) -> Element:
    config = algorithms.config(location="./", expect_references=1)
    try:
        result = Verifier().verify(etree.tostring(assertion), x509_cert=signer, expect_config=config)
    except (InvalidDigest, InvalidSignature) as exc:
        raise Fault("wsse:FailedCheck", f"signature du VIHF invalide : {exc}", detail="SIGNATURE_VIHF") from None
    except InvalidCertificate as exc:
        raise failed_authentication(f"certificat de signature du VIHF : {exc}") from None
    except (InvalidInput, SignXMLException, etree.DocumentInvalid) as exc:
        raise _invalid(f"signature du VIHF illisible : {exc}") from None
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None or signed.tag != q(SAML, "Assertion") or signed.get("ID") != assertion_id:
        raise _invalid("VIHF : la signature ne couvre pas l'assertion")
    return signed


def _attributes(signed: Element, signer: x509.Certificate) -> Vihf:
    values: dict[str, list[Element]] = {}
    for attribute in signed.iterfind(f"{q(SAML, 'AttributeStatement')}/{q(SAML, 'Attribute')}"):
        name = attribute.get("Name", "")
        if name in values:
            raise _token(f"VIHF : attribut {name} répété")
        values[name] = attribute.findall(q(SAML, "AttributeValue"))
    simple: dict[str, str] = {}
    for name in _REQUIRED:
        found = values.get(name)
        if not found:
            raise _invalid(f"VIHF : attribut {name} absent")
        if len(found) != 1 or not text(found[0]):
            raise _token(f"VIHF : attribut {name} vide ou à plusieurs valeurs")
        simple[name] = text(found[0])
    expected = {"VIHF_Version": "3.0", "Ressource_URN": "urn:dmp"}
    for name, value in expected.items():
        if simple[name] != value:
            raise _token(f"VIHF : {name} doit valoir {value}")
    if not re.fullmatch(r"SA\d{2}\^1\.2\.250\.1\.71\.4\.2\.4", simple["Secteur_Activite"]):
        raise _token("VIHF : Secteur_Activite doit être de la forme SAnn^1.2.250.1.71.4.2.4")
    if simple["Authentification_Mode"] not in AUTHENTICATION_MODES:
        raise _token("VIHF : Authentification_Mode inconnu")
    purposes = [_ce(value, "PurposeOfUse") for value in values.get(PURPOSE, [])]
    if len(purposes) != 1:
        raise _invalid("VIHF : un PurposeOfUse (CE) est attendu dans purposeofuse")
    roles = [_ce(value, "Role") for value in values.get(ROLE, [])]
    if not roles or not any(system in ROLE_SYSTEMS for _, system in roles):
        raise _invalid("VIHF : au moins un Role (CE) de TRE_G15 ou TRE_R01 est attendu")
    name_id = text(signed.find(f"{q(SAML, 'Subject')}/{q(SAML, 'NameID')}"))
    context = text(
        signed.find(f"{q(SAML, 'AuthnStatement')}/{q(SAML, 'AuthnContext')}/{q(SAML, 'AuthnContextClassRef')}")
    )
    if not name_id or not context:
        raise _invalid("VIHF : saml2:Subject/NameID et AuthnStatement/AuthnContext sont obligatoires")
    return Vihf(simple["Identifiant_Structure"], simple[RESOURCE_ID], name_id, simple["Authentification_Mode"], signer)


def _ce(value: Element, name: str) -> tuple[str, str]:
    coded = value.find(q(HL7, name))
    xsi_type = "" if coded is None else coded.get(q(XSI, "type"), "").rpartition(":")[2]
    if coded is None or xsi_type != "CE" or not coded.get("code") or not coded.get("codeSystem"):
        raise _token(f"VIHF : {name} doit être un CE avec code et codeSystem")
    return coded.get("code", ""), coded.get("codeSystem", "")


def _instant(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value


def _invalid(reason: str) -> Fault:
    return Fault("wsse:InvalidSecurity", reason, detail="VIHF_INVALIDE")


def _token(reason: str) -> Fault:
    return Fault("wsse:InvalidSecurityToken", reason, detail="VIHF_INVALIDE")
