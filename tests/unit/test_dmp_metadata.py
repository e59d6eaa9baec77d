"""The ITI-41 request against the DMP-accepted sample, element by element; ITI-57 and ITI-18 bodies.

The sample is tests/fixtures/drim-m/xds-provide-and-register-example.xml. Ids, times, hashes of the
signature, signatures and site/person values are ignored; what must match is the MIME layout, the
SOAP header structure and the metadata structure (schemes, slot names, codes). Intended differences:

- the VIHF subject-id names the author ("KIT DOC0036790"), not the patient (PoC bug, DRIM-M §4.6);
- the VIHF specialty role is the author's (SM44 from `G15_10/SM44`), not the PoC's hard-coded SM26;
- wsa:Action carries `soap:mustUnderstand="true"` (the sample's unqualified attribute means nothing to SOAP 1.2);
- the VIHF assertion ID is `_<uuid>` (an xs:ID must not start with a digit);
- entry ids are `urn:uuid:` UUIDs instead of "SubmissionSet01", "DocumentKOS", "Signature01", "claNN";
- the region eventCode uses JDV_RegionAnatomique_CISIS 1.2.250.1.213.1.1.5.695, not the CCAM OID;
- the studyInstanceUID reference id's authority is `dmp.uid_root`, not the PoC placeholder 1.2.3.4.5.6;
- referenceIdList sits with the other Slots (ebRIM 3.0 order), not after the Classifications;
- the root MIME part has no `action` parameter (it is on the HTTP Content-Type); parts go in Content-ID order;
- the signature's Manifest has no bogus xsi:schemaLocation; the SubmissionSet and KOS entries have the
  Name/Description this box writes (report title, study description).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import httpx
import pytest
from lxml import etree

from drimbox.dmp import codes
from tests.unit.test_dmp_identity import STRUCTURE_ID, Pki, build_pki
from tests.unit.test_dmp_samples import (
    KOS_FILE,
    KOS_SHA1,
    NS,
    SIGNATURE_UID,
    UID_ROOT,
    Captured,
    SamplePart,
    capture,
    dmp_settings,
    sample_parts,
    sample_submission,
)

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sample() -> dict[str, SamplePart]:
    return sample_parts()


@pytest.fixture(scope="module")
def sent(pki: Pki) -> Captured:
    return capture(dmp_settings(pki), lambda gateway: gateway.provide(sample_submission()))


# --- structure comparison ------------------------------------------------------------------------

_PREFIX = {uri: prefix for prefix, uri in NS.items()}
#: Slots whose values are times of the run (their presence is still compared).
_TIMES = {"creationTime", "submissionTime", "serviceStartTime", "serviceStopTime"}


def _q(tag: str) -> str:
    qname = etree.QName(tag)
    return f"{_PREFIX.get(qname.namespace or '', qname.namespace)}:{qname.localname}"


def _shape(node: etree._Element, keep: tuple[str, ...] = ("Algorithm", "Type", "Format", "Name")) -> Any:
    """Element names, the attributes that define behaviour, and the children, recursively."""
    attributes = tuple(sorted((name, value) for name, value in node.attrib.items() if name in keep))
    return (_q(node.tag), attributes, tuple(_shape(child, keep) for child in node if isinstance(child.tag, str)))


def _values(node: etree._Element, name: str) -> tuple[str, ...]:
    return tuple(node.xpath(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value/text()", namespaces=NS))


def _localized(node: etree._Element, tag: str) -> tuple[str, str, str] | None:
    string = node.find(f"rim:{tag}/rim:LocalizedString", NS)
    if string is None:
        return None
    return (
        string.get("value", ""),
        string.get("charset", ""),
        string.get("{http://www.w3.org/XML/1998/namespace}lang", ""),
    )


def _profile(obj: etree._Element, *, ignore: set[str]) -> dict[str, Any]:
    """What must match between our RegistryPackage/ExtrinsicObject and the sample's."""
    slots = {s.get("name"): _values(obj, s.get("name", "")) for s in obj.findall("rim:Slot", NS)}
    classifications = Counter()
    for item in obj.findall("rim:Classification", NS):
        assert item.get("classifiedObject") == obj.get("id")
        inner = {s.get("name"): _values(item, s.get("name", "")) for s in item.findall("rim:Slot", NS)}
        key = (
            item.get("classificationScheme") or item.get("classificationNode"),
            item.get("nodeRepresentation"),
            tuple(sorted(inner.items())),
            _localized(item, "Name"),
        )
        classifications[key] += 1
    identifiers = Counter()
    for item in obj.findall("rim:ExternalIdentifier", NS):
        assert item.get("registryObject") == obj.get("id")
        identifiers[(item.get("identificationScheme"), item.get("value"), _localized(item, "Name"))] += 1
    return {
        "tag": _q(obj.tag),
        "attributes": {k: v for k, v in obj.attrib.items() if k != "id"},
        "slot names": Counter(s.get("name") for s in obj.findall("rim:Slot", NS)),
        "slot values": {k: v for k, v in slots.items() if k not in _TIMES | ignore},
        "name": None if "Name" in ignore else _localized(obj, "Name"),
        "description": None if "Description" in ignore else _localized(obj, "Description"),
        "classifications": classifications,
        "identifiers": identifiers,
    }


def _objects(envelope: etree._Element) -> dict[str, etree._Element]:
    """The sample's and our registry objects by role: SubmissionSet, KOS, Signature."""
    objects = envelope.find(".//lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
    assert objects is not None
    found = {"SubmissionSet": objects.find("rim:RegistryPackage", NS)}
    for entry in objects.findall("rim:ExtrinsicObject", NS):
        found["KOS" if entry.get("mimeType") == "application/dicom" else "Signature"] = entry
    return {role: node for role, node in found.items() if node is not None}


def _sample_envelope(sample: dict[str, SamplePart]) -> etree._Element:
    return etree.fromstring(sample["0.1"].body)


def _intended(profile: dict[str, Any], role: str) -> dict[str, Any]:
    """Apply the intended differences to a profile of the sample (see the module docstring)."""
    if role == "KOS":
        region = next(key for key in profile["classifications"] if key[1] == "63337009")
        count = profile["classifications"].pop(region)
        inner = (("codingScheme", (codes.REGION_SYSTEM,)),)
        profile["classifications"][(region[0], region[1], inner, region[3])] = count
    if "urn:ihe:iti:xds:2013:referenceIdList" in profile["slot values"]:
        values = profile["slot values"]["urn:ihe:iti:xds:2013:referenceIdList"]
        profile["slot values"]["urn:ihe:iti:xds:2013:referenceIdList"] = tuple(
            v.replace("&1.2.3.4.5.6&", f"&{UID_ROOT}&") for v in values
        )
    return profile


_IGNORED = {
    "SubmissionSet": {"Name", "Description"},
    "KOS": set(),
    "Signature": {"hash", "size"},
}


@pytest.mark.parametrize("role", ["SubmissionSet", "KOS", "Signature"])
def test_registry_objects_match_the_sample(sent: Captured, sample: dict[str, SamplePart], role: str) -> None:
    ours = _objects(sent.envelope)[role]
    theirs = _objects(_sample_envelope(sample))[role]
    expected = _intended(_profile(theirs, ignore=_IGNORED[role]), role)
    assert _profile(ours, ignore=_IGNORED[role]) == expected


def test_the_kos_entry_quotes_the_exact_kos(sent: Captured) -> None:
    kos = _objects(sent.envelope)["KOS"]
    data = KOS_FILE.read_bytes()
    assert _values(kos, "hash") == (KOS_SHA1,)
    assert _values(kos, "size") == ("8450",)
    include = sent.envelope.find(f".//xdsb:Document[@id='{kos.get('id')}']/xop:Include", NS)
    assert include is not None and include.get("href") == "cid:0.2"
    assert sent.parts["0.2"] == data


def test_the_signature_entry_quotes_the_signature_part(sent: Captured) -> None:
    signature = _objects(sent.envelope)["Signature"]
    include = sent.envelope.find(f".//xdsb:Document[@id='{signature.get('id')}']/xop:Include", NS)
    assert include is not None and include.get("href") == "cid:0.3"
    part = sent.parts["0.3"]
    assert _values(signature, "hash") == (hashlib.sha1(part).hexdigest(),)
    assert _values(signature, "size") == (str(len(part)),)


def test_associations_match_the_sample(sent: Captured, sample: dict[str, SamplePart]) -> None:
    def associations(envelope: etree._Element) -> Counter[tuple[str | None, str, str, tuple[str, ...]]]:
        roles = {node.get("id"): role for role, node in _objects(envelope).items()}
        found: Counter[tuple[str | None, str, str, tuple[str, ...]]] = Counter()
        for item in envelope.iterfind(".//rim:Association", NS):
            slots = tuple(
                sorted(f"{s.get('name')}={_values(item, s.get('name', ''))}" for s in item.findall("rim:Slot", NS))
            )
            found[
                (item.get("associationType"), roles[item.get("sourceObject")], roles[item.get("targetObject")], slots)
            ] += 1
        return found

    assert associations(sent.envelope) == associations(_sample_envelope(sample))


def test_documents_and_registry_object_order_match_the_sample(sent: Captured, sample: dict[str, SamplePart]) -> None:
    def order(envelope: etree._Element) -> list[Any]:
        request = envelope.find("soap:Body/xdsb:ProvideAndRegisterDocumentSetRequest", NS)
        assert request is not None
        objects = request.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
        assert objects is not None
        return [_q(c.tag) for c in request] + [_q(c.tag) for c in objects]

    assert order(sent.envelope) == order(_sample_envelope(sample))


def test_soap_header_matches_the_sample(sent: Captured, sample: dict[str, SamplePart]) -> None:
    ours, theirs = sent.envelope, _sample_envelope(sample)
    assert [_q(c.tag) for c in ours.find("soap:Header", NS)] == [_q(c.tag) for c in theirs.find("soap:Header", NS)]
    assert ours.findtext("soap:Header/wsa:Action", namespaces=NS) == ITI41
    assert (
        ours.findtext("soap:Header/wsa:To", namespaces=NS)
        == "https://dmp.example.fr/si-dmp-server/v2/services/repository"
    )
    assert ours.findtext("soap:Header/wsa:MessageID", namespaces=NS).startswith("urn:uuid:")
    action = ours.find("soap:Header/wsa:Action", NS)
    assert action.get(f"{{{NS['soap']}}}mustUnderstand") == "true"  # the sample: unqualified attribute
    path = "soap:Header/wsse:Security/saml2:Assertion"
    ours_assertion, their_assertion = ours.find(path, NS), theirs.find(path, NS)
    assert _shape(ours_assertion, keep=("Algorithm", "Format", "Name")) == _shape(
        their_assertion, keep=("Algorithm", "Format", "Name")
    )
    assert ours_assertion.get("Version") == "2.0"


def test_vihf_values_are_the_authors_and_the_sites(sent: Captured, sample: dict[str, SamplePart]) -> None:
    def attributes(envelope: etree._Element) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for attribute in envelope.iterfind(".//saml2:Attribute", NS):
            values = []
            for value in attribute.findall("saml2:AttributeValue", NS):
                coded = [dict(c.attrib) for c in value if isinstance(c.tag, str)]
                values.append(coded[0] if coded else (value.text or "").strip())
            found[attribute.get("Name", "")] = values
        return found

    ours, theirs = attributes(sent.envelope), attributes(_sample_envelope(sample))
    assert list(ours) == list(theirs)
    for name in ("VIHF_Version", "Ressource_URN", "Authentification_Mode", RESOURCE_ID, PURPOSE):
        assert ours[name] == theirs[name], name
    assert ours["urn:oasis:names:tc:xspa:1.0:subject:subject-id"] == ["KIT DOC0036790"]  # the sample: the patient
    assert ours["Secteur_Activite"] == ["SA01^1.2.250.1.71.4.2.4"]
    assert ours["Identifiant_Structure"] == [STRUCTURE_ID]
    assert ours["LPS_ID_HOMOLOGATION_DMP"] == ["BCO-465897-tmp2"]
    roles = [(r["code"], r["codeSystem"]) for r in ours[ROLE]]
    assert roles == [("10", "1.2.250.1.71.1.2.7"), ("SM44", "1.2.250.1.71.4.2.5")]  # the sample: SM26
    assert sent.envelope.findtext(".//saml2:NameID", namespaces=NS) == "899700367909"
    assert sent.envelope.findtext(".//saml2:Issuer", namespaces=NS) == (
        f"CN=DRIMbox, OU={STRUCTURE_ID}, O=CABINET M DOC0036790, ST=Paris (75), C=FR"
    )


RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"


def test_mime_layout_matches_the_sample(sent: Captured, sample: dict[str, SamplePart]) -> None:
    content_type = sent.request.headers["Content-Type"]
    for parameter in (
        'type="application/xop+xml"',
        'start="<0.1>"',
        'start-info="application/soap+xml"',
        f'action="{ITI41}"',
        'boundary="',
    ):
        assert parameter in content_type
    assert content_type.startswith("multipart/related;")
    ours = _our_part_headers(sent.request)
    theirs = {
        cid: (part.headers["content-type"].split(";")[0], part.headers["content-transfer-encoding"].lower())
        for cid, part in sample.items()
    }
    assert {cid: (ct.split(";")[0], cte) for cid, (ct, cte) in ours.items()} == theirs
    root_type = ours["0.1"][0]
    assert "charset=UTF-8" in root_type and 'type="application/soap+xml"' in root_type


def _our_part_headers(request: httpx.Request) -> dict[str, tuple[str, str]]:
    boundary = request.headers["Content-Type"].split('boundary="')[1].split('"')[0].encode()
    found = {}
    for chunk in request.content.split(b"--" + boundary)[1:-1]:
        head = chunk.split(b"\r\n\r\n", 1)[0].decode()
        headers = dict(line.split(": ", 1) for line in head.strip().split("\r\n"))
        found[headers["Content-ID"].strip("<>")] = (headers["Content-Type"], headers["Content-Transfer-Encoding"])
    return found


def test_xades_part_matches_the_sample(sent: Captured, sample: dict[str, SamplePart]) -> None:
    ours, theirs = etree.fromstring(sent.parts["0.3"]), etree.fromstring(sample["0.3"].body)
    keep = ("Algorithm", "Type", "Id", "Target")
    assert _shape(ours, keep) == _shape(theirs, keep)
    references = "ds:Object/ds:Manifest/ds:Reference"

    def pairs(root: etree._Element) -> list[tuple[str | None, str | None]]:
        return [(r.get("URI"), r.findtext("ds:DigestValue", namespaces=NS)) for r in root.iterfind(references, NS)]

    assert pairs(ours) == pairs(theirs)  # same uniqueIds, and the KOS digest WECMEWtRSXwPIITJDaPIXHCYRVo=
    assert ours.get("Id") == theirs.get("Id") == SIGNATURE_UID
