"""What every transaction handler gets: the sandbox's state and rules, and the checked request."""

from __future__ import annotations

from dataclasses import dataclass, field

from drimbox.sandbox.dmp.envelope import Envelope
from drimbox.sandbox.dmp.mtom import SoapMessage
from drimbox.sandbox.dmp.store import Store
from drimbox.sandbox.dmp.trust import Trust
from drimbox.sandbox.dmp.vihf import Algorithms, Vihf

TEST_INS_OIDS = frozenset({"1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"})
PRODUCTION_INS_OIDS = frozenset({"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9"})
REPOSITORY_UID = "1.2.250.1.999.9.1.1"  # the sandbox repository's own OID (test arc, as in the samples)


@dataclass(frozen=True)
class Rules:
    """How strict the sandbox is where the DMP's rules are configuration rather than law."""

    ins_oids: frozenset[str] = TEST_INS_OIDS | PRODUCTION_INS_OIDS
    algorithms: Algorithms = field(default_factory=Algorithms)
    require_known_patients: bool = False
    repository_uid: str = REPOSITORY_UID


@dataclass(frozen=True)
class Context:
    store: Store
    trust: Trust
    rules: Rules
    envelope: Envelope
    message: SoapMessage
    vihf: Vihf
