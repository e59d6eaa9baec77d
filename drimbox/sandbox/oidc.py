"""A stand-in for Pro Santé Connect (PSC), the OpenID Connect provider of French health professionals.

It speaks the real protocols (OpenID Connect authorization code flow with PKCE, RFC 7662
introspection, RFC 7009 revocation, JWKS) with PSC's claim shapes (`SubjectNameID`,
`SubjectRefPro`), and refuses every malformed request a strict provider would, so what works
against it should work against PSC's test platform. There is no login page: `/auth` logs in the
first configured professional (or `login_hint`) at once.

Clients registered without a secret authenticate by their TLS certificate (RFC 8705 §2.1
tls_client_auth), as PSC asks of a DRIM-M box (§4.11: CN = client_id, OU = structure id): served
with `client_ca`, the sandbox checks that the certificate the connection presented (chained to that
CA) has exactly the subject DN the client registered.

Tests also get shortcuts: `issue_token()` mints an access token without the browser flow,
`revoke()` withdraws one, `clock` moves time, `calls` counts requests per path, and
`failing_status` makes every endpoint answer that HTTP status (an outage).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from drimbox.sandbox.http import Served, serve_in_thread
from drimbox.sandbox.tls_peer import serve_with_client_certificates

_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_AUTH_PARAMS = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "acr_values", "login_hint"}
    | {"code_challenge", "code_challenge_method"}
)
_CLIENT_PARAMS = frozenset({"client_id", "client_secret"})
_TOKEN_PARAMS = _CLIENT_PARAMS | {"grant_type", "code", "redirect_uri", "code_verifier"}
_TOKEN_REF_PARAMS = _CLIENT_PARAMS | {"token", "token_type_hint"}


@dataclass(frozen=True)
class SandboxPractitioner:
    """A test professional; `subject_name_id` is PSC's IdNat_PS ("8" + RPPS number)."""

    subject_name_id: str
    given_name: str
    family_name: str
    civility: str = "MME"
    profession: str = "10"  # médecin
    category: str = "C"  # civil
    specialty: str = "SM44"  # radio-diagnostic
    site_name: str = "Cabinet d'imagerie médicale du Vieux-Port"
    structure_id: str = "1130012345"
    sector: str = "SA07"

    @property
    def sub(self) -> str:
        """PSC's own account id: stable, opaque, unlike the national id."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"psc-sandbox:{self.subject_name_id}"))

    def userinfo(self) -> dict[str, object]:
        activity = {
            "raisonSocialeSite": self.site_name,
            "ancienIdentifiantDeLaStructure": self.structure_id,
            "codeSecteurDactivite": self.sector,
        }
        practice = {
            "codeProfession": self.profession,
            "codeCategorieProfessionnelle": self.category,
            "codeCiviliteDexercice": "DR",
            "codeSavoirFaire": self.specialty,
            "prenomDexercice": self.given_name,
            "nomDexercice": self.family_name,
            "activities": [activity],
        }
        return {
            "sub": self.sub,
            "SubjectNameID": self.subject_name_id,
            "preferred_username": self.subject_name_id,
            "given_name": self.given_name,
            "family_name": self.family_name,
            "SubjectRefPro": {"codeCivilite": self.civility, "exercices": [practice]},
        }


@dataclass(frozen=True)
class SandboxClient:
    """A registered client; no secret means it authenticates by its TLS certificate (RFC 8705),
    whose subject must be `tls_client_auth_subject_dn` (RFC 4514, as RFC 8705 §2.1.2 registers it)."""

    client_id: str
    client_secret: str = ""
    redirect_uris: tuple[str, ...] = ()
    tls_client_auth_subject_dn: str = ""

    @classmethod
    def with_certificate(cls, client_id: str, certificate: Path) -> SandboxClient:
        """A tls_client_auth client registered with the subject of the first certificate in a PEM file."""
        subject = x509.load_pem_x509_certificates(certificate.read_bytes())[0].subject
        return cls(client_id, tls_client_auth_subject_dn=subject.rfc4514_string())


PRACTITIONERS = (
    SandboxPractitioner("810000000001", "Hélène", "Lefèvre"),
    SandboxPractitioner("810000000002", "François", "Bénard-Ñúñez", civility="M", site_name="Clinique Sainte-Thérèse"),
)
DEMO_CLIENT = SandboxClient("drimbox-demo", "drimbox-demo-secret", ("http://127.0.0.1:8080/psc/callback",))


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer: HTTP status, `error` code and a description."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status, self.error, self.description = status, error, description


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    practitioner: SandboxPractitioner
    scope: str
    nonce: str
    challenge: str | None
    expires_at: float
    used: bool = False
    token_ids: list[str] = field(default_factory=list)


@dataclass
class IssuedToken:
    """An access token the sandbox signed, found again by its `jti`."""

    client_id: str
    practitioner: SandboxPractitioner
    scope: str
    audience: str
    issued_at: int
    expires_at: int
    revoked: bool = False


class PscSandbox:
    """The provider's state (keys, codes, issued tokens) and its FastAPI `app`."""

    def __init__(
        self,
        *,
        issuer: str = "",
        clients: Sequence[SandboxClient] = (DEMO_CLIENT,),
        practitioners: Sequence[SandboxPractitioner] = PRACTITIONERS,
        clock: Callable[[], float] = time.time,
        token_seconds: int = 600,
        code_seconds: int = 60,
        introspection_profile: bool = False,
    ) -> None:
        """`introspection_profile` adds `SubjectRefPro` to introspection answers; without it a
        verifier must ask the userinfo endpoint for the professional's profession and structure."""
        if not practitioners:
            raise ValueError("PscSandbox needs at least one practitioner")
        self.issuer = issuer  # empty: taken from serve(), or from the URL a request reached
        self.clients = {client.client_id: client for client in clients}
        self.practitioners = {p.subject_name_id: p for p in practitioners}
        self.clock = clock
        self.token_seconds, self.code_seconds = token_seconds, code_seconds
        self.introspection_profile = introspection_profile
        self.mutual_tls = False  # set by serve(client_ca=...): certificate-only clients may then call
        self.failing_status: int | None = None  # set by a test: every request answers this status
        self.calls: Counter[str] = Counter()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwk: dict[str, str] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        self.kid = _thumbprint(self.jwk)
        self.jwk |= {"kid": self.kid, "use": "sig", "alg": "RS256"}
        self._codes: dict[str, _Code] = {}
        self._grants: dict[str, IssuedToken] = {}
        self._lock = threading.Lock()
        self.app: FastAPI = _build_app(self)

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        client_ca: Path | None = None,
    ) -> Served:
        """Serve in a thread; the issuer becomes this URL unless one was given.

        With `client_ca`, every connection is asked for a certificate chaining to it, and
        certificate-only clients can authenticate; other callers (a browser at `/auth`) need none.
        """
        if client_ca is None:
            served = serve_in_thread(self.app, host, port, certfile=certfile, keyfile=keyfile)
        elif certfile is None or keyfile is None:
            raise ValueError("client_ca needs certfile and keyfile: mutual TLS is TLS first")
        else:
            served = serve_with_client_certificates(
                self.app, host, port, certfile=certfile, keyfile=keyfile, client_ca=client_ca
            )
        self.mutual_tls = client_ca is not None
        if not self.issuer:
            self.issuer = f"{'https' if certfile else 'http'}://{host}:{served.port}"
        return served

    def issue_token(
        self,
        subject: str | None = None,
        *,
        client_id: str | None = None,
        expires_in: int | None = None,
        scope: str = "openid scope_all",
        audience: str | None = None,
    ) -> str:
        """An access token for practitioner `subject` (SubjectNameID; default the first), no flow needed."""
        client = client_id or next(iter(self.clients), "drimbox-demo")
        token, _ = self._mint_access(self._practitioner(subject), client, scope, "", expires_in, audience)
        return token

    def revoke(self, token: str) -> bool:
        """Withdraw an access token (as a logout at PSC would); False when it is not ours."""
        grant_id = self._grant_id(token)
        with self._lock:
            grant = self._grants.get(grant_id or "")
            if grant is not None:
                grant.revoked = True
            return grant is not None

    # -- flows ---------------------------------------------------------------------------------

    def authorize(self, params: dict[str, str]) -> tuple[str, dict[str, str]]:
        """(redirect_uri, parameters to add to it) for a `/auth` request."""
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            raise OAuthError(400, "unauthorized_client", "unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise OAuthError(400, "invalid_request", "redirect_uri is not registered for this client")
        state = params.get("state")
        try:
            code = self._new_code(client, redirect_uri, params)
        except OAuthError as exc:  # once the redirect_uri is known good, errors go back through it
            answer = {"error": exc.error, "error_description": exc.description}
            return redirect_uri, answer | ({"state": state} if state else {})
        return redirect_uri, {"code": code, "state": params["state"], "iss": self.issuer_for()}

    def exchange(self, client: SandboxClient, form: dict[str, str]) -> dict[str, object]:
        """The `/token` answer for an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.6)."""
        _require(form, "grant_type", "code", "redirect_uri")
        if form["grant_type"] != "authorization_code":
            raise OAuthError(400, "unsupported_grant_type", "only authorization_code is supported")
        with self._lock:
            code = self._codes.get(form["code"])
            if code is None or code.client_id != client.client_id:
                raise OAuthError(400, "invalid_grant", "unknown authorization code")
            if code.used:  # RFC 6749 §4.1.2: a replayed code revokes what it gave
                for grant_id in code.token_ids:
                    self._grants[grant_id].revoked = True
                raise OAuthError(400, "invalid_grant", "authorization code already used")
            code.used = True
        if code.expires_at <= self.clock():
            raise OAuthError(400, "invalid_grant", "authorization code expired")
        if form["redirect_uri"] != code.redirect_uri:
            raise OAuthError(400, "invalid_grant", "redirect_uri differs from the authorization request")
        _check_pkce(code.challenge, form.get("code_verifier"))
        access, grant_id = self._mint_access(code.practitioner, client.client_id, code.scope, code.nonce)
        with self._lock:
            code.token_ids.append(grant_id)
        return {
            "access_token": access,
            "id_token": self._mint_id_token(code.practitioner, client.client_id, code.nonce),
            "token_type": "Bearer",
            "expires_in": self.token_seconds,
            "scope": code.scope,
        }

    def introspect(self, token: str) -> dict[str, object]:
        """RFC 7662 §2.2: only `active: false` for anything not currently valid."""
        grant = self.active_grant(token)
        if grant is None:
            return {"active": False}
        practitioner = grant.practitioner
        profile = {"SubjectRefPro": practitioner.userinfo()["SubjectRefPro"]} if self.introspection_profile else {}
        return profile | {
            "active": True,
            "sub": practitioner.sub,
            "SubjectNameID": practitioner.subject_name_id,
            "client_id": grant.client_id,
            "aud": grant.audience,
            "exp": grant.expires_at,
            "iat": grant.issued_at,
            "iss": self.issuer_for(),
            "scope": grant.scope,
            "token_type": "Bearer",
            "acr": "eidas1",
        }

    def active_grant(self, token: str) -> IssuedToken | None:
        grant_id = self._grant_id(token)
        with self._lock:
            grant = self._grants.get(grant_id or "")
        if grant is None or grant.revoked or grant.expires_at <= self.clock():
            return None
        return grant

    def authenticate(self, request: Request, form: dict[str, str]) -> SandboxClient:
        """client_secret_basic, client_secret_post or tls_client_auth (exactly one); pops the
        client parameters from `form`."""
        posted_id, secret = form.pop("client_id", None), form.pop("client_secret", None)
        header = request.headers.get("authorization")
        if header is not None:
            if secret is not None:
                raise OAuthError(400, "invalid_request", "more than one client authentication method")
            basic_id, secret = _basic_credentials(header)
            if posted_id not in (None, basic_id):
                raise OAuthError(400, "invalid_request", "client_id differs from the Basic credentials")
            posted_id = basic_id
        if posted_id is None:
            raise OAuthError(401, "invalid_client", "client authentication required")
        client = self.clients.get(posted_id)
        if client is None:
            raise OAuthError(401, "invalid_client", "unknown client")
        if client.client_secret:
            if secret is None or not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
                raise OAuthError(401, "invalid_client", "wrong client secret")
        elif secret is not None:
            raise OAuthError(401, "invalid_client", "this client authenticates with its TLS certificate only")
        else:
            self._check_certificate(client, request)
        return client

    def _check_certificate(self, client: SandboxClient, request: Request) -> None:
        """RFC 8705 §2.1: the connection's certificate (its chain checked in the handshake) must
        carry the subject DN the client registered; anyone else's certificate is no credential."""
        presented = _client_cert_name(request) if self.mutual_tls else None
        if presented is None:
            raise OAuthError(
                401, "invalid_client", "this client authenticates with its TLS certificate: none presented"
            )
        if not _same_dn(presented, client.tls_client_auth_subject_dn):
            raise OAuthError(
                401, "invalid_client", "the TLS client certificate is not the one registered for this client"
            )

    # -- internals -----------------------------------------------------------------------------

    def _new_code(self, client: SandboxClient, redirect_uri: str, params: dict[str, str]) -> str:
        _require(params, "response_type", "scope", "state", "nonce", "acr_values")
        if params["response_type"] != "code":
            raise OAuthError(400, "unsupported_response_type", "only response_type=code is supported")
        if "openid" not in params["scope"].split():
            raise OAuthError(400, "invalid_scope", "scope must contain openid")
        if params["acr_values"] != "eidas1":
            raise OAuthError(400, "invalid_request", "acr_values must be eidas1")
        challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
        if (challenge is None) != (method is None) or (method is not None and method != "S256"):
            raise OAuthError(400, "invalid_request", "PKCE needs code_challenge with code_challenge_method=S256")
        if challenge is not None and not _PKCE_CHALLENGE.fullmatch(challenge):
            raise OAuthError(400, "invalid_request", "malformed code_challenge")
        hint = params.get("login_hint")
        if hint is not None and hint not in self.practitioners:
            raise OAuthError(400, "invalid_request", "login_hint names no known professional")
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = _Code(
                client_id=client.client_id,
                redirect_uri=redirect_uri,
                practitioner=self._practitioner(hint),
                scope=params["scope"],
                nonce=params["nonce"],
                challenge=challenge,
                expires_at=self.clock() + self.code_seconds,
            )
        return code

    def _practitioner(self, subject: str | None) -> SandboxPractitioner:
        if subject is None:
            return next(iter(self.practitioners.values()))
        try:
            return self.practitioners[subject]
        except KeyError:
            raise ValueError(f"unknown practitioner {subject!r} (known: {', '.join(self.practitioners)})") from None

    def _mint_access(
        self,
        practitioner: SandboxPractitioner,
        client_id: str,
        scope: str,
        nonce: str,
        expires_in: int | None = None,
        audience: str | None = None,
    ) -> tuple[str, str]:
        now = int(self.clock())
        grant = IssuedToken(
            client_id, practitioner, scope, audience or client_id, now, now + (expires_in or self.token_seconds)
        )
        grant_id = secrets.token_urlsafe(16)
        claims = self._claims(practitioner, grant.audience, client_id, grant.expires_at, nonce) | {
            "jti": grant_id,
            "typ": "Bearer",
            "scope": scope,
        }
        with self._lock:
            self._grants[grant_id] = grant
        return self._sign(claims), grant_id

    def _mint_id_token(self, practitioner: SandboxPractitioner, client_id: str, nonce: str) -> str:
        expires = int(self.clock()) + self.token_seconds
        return self._sign(self._claims(practitioner, client_id, client_id, expires, nonce) | {"typ": "ID"})

    def _claims(self, who: SandboxPractitioner, aud: str, azp: str, exp: int, nonce: str) -> dict[str, object]:
        now = int(self.clock())
        claims: dict[str, object] = {"iss": self.issuer_for(), "sub": who.sub, "aud": aud, "azp": azp}
        claims |= {"exp": exp, "iat": now, "auth_time": now, "acr": "eidas1", "SubjectNameID": who.subject_name_id}
        return claims | ({"nonce": nonce} if nonce else {})

    def _sign(self, claims: dict[str, object]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def _grant_id(self, token: str) -> str | None:
        """The `jti` of an access token we signed; None for anything else (forged, id token...)."""
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "require": ["jti"]},
            )
        except jwt.PyJWTError:
            return None
        grant_id = claims.get("jti")
        return grant_id if isinstance(grant_id, str) else None

    def issuer_for(self, request: Request | None = None) -> str:
        if not self.issuer and request is not None:
            self.issuer = str(request.base_url).rstrip("/")
        if not self.issuer:
            raise RuntimeError("PscSandbox.issuer is unknown: call serve() or give issuer=")
        return self.issuer


def _build_app(psc: PscSandbox) -> FastAPI:
    app = FastAPI(title="Pro Santé Connect sandbox", openapi_url=None, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Response:
        psc.calls[request.url.path] += 1
        if psc.failing_status is not None:
            body = {"error": "temporarily_unavailable", "error_description": "sandbox outage"}
            return JSONResponse(body, status_code=psc.failing_status)
        response: Response = await call_next(request)
        return response

    async def oauth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OAuthError)
        headers = {"WWW-Authenticate": 'Basic realm="psc-sandbox"'} if exc.status == 401 else {}
        body = {"error": exc.error, "error_description": exc.description}
        return JSONResponse(body, status_code=exc.status, headers=headers | _NO_STORE)

    app.add_exception_handler(OAuthError, oauth_error)

    @app.get("/.well-known/openid-configuration")
    async def discovery(request: Request) -> JSONResponse:
        return JSONResponse(_discovery(psc.issuer_for(request)))

    @app.get("/jwks")
    async def jwks() -> JSONResponse:
        return JSONResponse({"keys": [psc.jwk]})

    @app.get("/auth")
    async def auth(request: Request) -> Response:
        psc.issuer_for(request)
        redirect_uri, answer = psc.authorize(_unique(request.query_params.multi_items(), _AUTH_PARAMS))
        separator = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(f"{redirect_uri}{separator}{urlencode(answer)}", status_code=302)

    @app.post("/token")
    async def token(request: Request) -> JSONResponse:
        form = await _form(request, _TOKEN_PARAMS)
        client = psc.authenticate(request, form)
        return JSONResponse(psc.exchange(client, form), headers=_NO_STORE)

    @app.api_route("/userinfo", methods=["GET", "POST"])
    async def userinfo(request: Request) -> JSONResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        grant = psc.active_grant(token) if scheme.lower() == "bearer" and token else None
        if grant is None:
            challenge = 'Bearer realm="psc-sandbox", error="invalid_token"' if token else 'Bearer realm="psc-sandbox"'
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers={"WWW-Authenticate": challenge})
        return JSONResponse(grant.practitioner.userinfo())

    @app.post("/token/introspect")
    async def introspect(request: Request) -> JSONResponse:
        form = await _form(request, _TOKEN_REF_PARAMS)
        psc.authenticate(request, form)
        _require(form, "token")
        return JSONResponse(psc.introspect(form["token"]), headers=_NO_STORE)

    @app.post("/revoke")
    async def revoke(request: Request) -> Response:
        form = await _form(request, _TOKEN_REF_PARAMS)
        client = psc.authenticate(request, form)
        _require(form, "token")
        grant = psc.active_grant(form["token"])
        if grant is not None and grant.client_id != client.client_id:  # RFC 7009 §2.1
            raise OAuthError(400, "unauthorized_client", "token was issued to another client")
        psc.revoke(form["token"])
        return Response(status_code=200)

    return app


def _discovery(issuer: str) -> dict[str, object]:
    methods = ["client_secret_basic", "client_secret_post", "tls_client_auth"]
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/auth",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "introspection_endpoint": f"{issuer}/token/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "jwks_uri": f"{issuer}/jwks",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "scope_all"],
        "acr_values_supported": ["eidas1"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "claims_supported": ["sub", "SubjectNameID", "SubjectRefPro", "given_name", "family_name", "acr", "nonce"],
    }


async def _form(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """An application/x-www-form-urlencoded body, as RFC 6749 §3.2 requires of POSTs."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise OAuthError(400, "invalid_request", "body must be application/x-www-form-urlencoded")
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise OAuthError(400, "invalid_request", "body is not UTF-8") from None
    return _unique(parse_qsl(text, keep_blank_values=True), allowed)


def _unique(pairs: Iterable[tuple[str, str]], allowed: frozenset[str]) -> dict[str, str]:
    """RFC 6749 §3.1: known parameters only, none twice; an empty one counts as absent."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise OAuthError(400, "invalid_request", f"unknown parameter {name!r}")
        if name in params:
            raise OAuthError(400, "invalid_request", f"parameter {name!r} given more than once")
        if value:
            params[name] = value
    return params


def _require(params: dict[str, str], *names: str) -> None:
    missing = [name for name in names if name not in params]
    if missing:
        raise OAuthError(400, "invalid_request", f"missing parameter(s): {', '.join(missing)}")


def _basic_credentials(header: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1: Base64 of form-encoded id ":" form-encoded secret."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError(401, "invalid_client", "client authentication must use the Basic scheme")
    try:
        client_id, colon, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(401, "invalid_client", "malformed Basic credentials") from None
    if not colon:
        raise OAuthError(401, "invalid_client", "malformed Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)


def _check_pkce(challenge: str | None, verifier: str | None) -> None:
    """RFC 7636 §4.6, S256 only (plain would send the secret in the front channel)."""
    if challenge is None:
        if verifier is not None:
            raise OAuthError(400, "invalid_request", "code_verifier given but the authorization had no code_challenge")
        return
    if verifier is None or not _PKCE_VERIFIER.fullmatch(verifier):
        raise OAuthError(400, "invalid_grant", "code_verifier missing or malformed")
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    if not hmac.compare_digest(digest, challenge):
        raise OAuthError(400, "invalid_grant", "code_verifier does not match code_challenge")


def _client_cert_name(request: Request) -> str | None:
    """The presented certificate's subject, as the ASGI TLS extension gives it (RFC 4514)."""
    tls = request.scope.get("extensions", {}).get("tls", {})
    name = tls.get("client_cert_name") if isinstance(tls, dict) else None
    return name if isinstance(name, str) and name else None


def _same_dn(presented: str, registered: str) -> bool:
    """RFC 8705 §2.1.2 compares DNs as RFC 4517 distinguishedNameMatch: attribute by attribute,
    ignoring case and repeated spaces in values (caseIgnoreMatch of CN, OU, O...), not as strings."""
    try:
        names = [x509.Name.from_rfc4514_string(dn) for dn in (presented, registered)]
    except ValueError:
        return False
    left, right = (
        [sorted((a.oid.dotted_string, " ".join(str(a.value).casefold().split())) for a in rdn) for rdn in name.rdns]
        for name in names
    )
    return bool(registered) and left == right


def _thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint, the usual `kid`."""
    canonical = json.dumps({name: jwk[name] for name in ("e", "kty", "n")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
