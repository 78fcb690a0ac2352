#!/usr/bin/python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (committed: a
fresh clone has them without running this).

    tests/fuzz/make_corpus.py BUILD_DIR

BUILD_DIR is a build with HSMJWT_FUZZ=ON: its tests/fuzz/seed_registry
writes the registry seeds with the project's own encoders.  Everything else
comes from tests/data (the Wycheproof JWS vectors, the RFC 7520 and RFC
8037 cookbook tokens, and JWTs signed here with the private keys of those
vectors by python3-jwcrypto), the request bodies the unit tests send,
etc/hsmjwt.conf.sample, and token specs with slot descriptions.  Each
corpus directory is rewritten, but for its regression-* seeds (inputs that
once found a bug, added by hand); seeds are named by content hash."""
import hashlib
import json
import os
import struct
import subprocess
import sys

from jwcrypto import jwk, jws
from jwcrypto.common import json_encode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
CORPUS = os.path.join(HERE, "corpus")
MAX_JWS = 8192


def reset(target):
    """Empties corpus/<target>/ but for the regression-* seeds added by hand."""
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if not name.startswith("regression-"):
            os.remove(os.path.join(d, name))
    return d


def put(d, data):
    if isinstance(data, str):
        data = data.encode()
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def sign(key, header, claims):
    token = jws.JWS(json_encode(claims).encode())
    token.add_signature(key, None, json_encode(header))
    return token.serialize(compact=True)


def jws_corpus():
    d = reset("jws")
    vectors = json.load(open(os.path.join(DATA, "wycheproof", "json_web_signature_test.json")))
    signers = {}
    for group in vectors["testGroups"]:
        for test in group["tests"]:
            if isinstance(test["jws"], str) and len(test["jws"]) <= MAX_JWS:
                put(d, test["jws"])
        priv, pub = group.get("private"), group.get("public")
        if priv and pub and pub.get("kid") and pub.get("kty") in ("EC", "RSA"):
            signers.setdefault(pub["kid"], priv)
    for name in ("4_1.rsa_v15_signature", "4_2.rsa-pss_signature", "4_3.ecdsa_signature"):
        put(d, json.load(open(os.path.join(DATA, "jose-cookbook", "jws", name + ".json")))["output"]["compact"])
    ed = json.load(open(os.path.join(DATA, "jose-cookbook", "curve25519", "jws.json")))
    put(d, ed["output"]["compact"])

    # JWTs that verify, so that jwt_verify's accepting path is reached:
    # valid, expired, not yet valid, with iss/aud/typ, by each key kind.
    claims = [
        {"iss": "http://127.0.0.1:8080", "sub": "alice", "aud": "api", "exp": 4102444800,
         "iat": 1699999000, "nbf": 1699999000, "jti": "Yk3bH0x9R5uWcQ2nV8aLzA", "scope": "read write"},
        {"sub": "bob", "exp": 1600000000},
        {"sub": "carol", "exp": 4102444800, "nbf": 1800000000},
        {"sub": "dave", "aud": ["api", "other"], "exp": 4102444800.5, "token_type": "refresh"},
    ]
    algs = {"kid-ec-sign": "ES256", "kid-rsa-sign": "RS256", "PS256_2048": "PS256", "RS512_2048": "RS512"}
    for kid, alg in algs.items():
        key = jwk.JWK(**signers[kid])
        for i, c in enumerate(claims):
            header = {"alg": alg, "kid": kid}
            if i == 0:
                header["typ"] = "at+jwt"
            put(d, sign(key, header, c))
    # Headers and payloads without a dot, which fuzz_jws signs itself with
    # the Ed25519 key before checking them as tokens.
    for header, payload in [
        (None, {"sub": "alice", "exp": 4102444800}),
        ({"alg": "EdDSA", "typ": "at+jwt"}, {"iss": "http://127.0.0.1:8080", "aud": "api", "sub": "a",
                                             "exp": 4102444800, "nbf": 1699999990, "iat": 1699999990}),
        ({"alg": "EdDSA", "typ": "at+jwt"}, {"iss": "http://127.0.0.1:8080", "aud": ["x", "api"],
                                             "exp": 1700000001, "iat": 1700000030}),
        ({"alg": "EdDSA", "crit": ["exp"]}, {"exp": 4102444800}),
        ({"alg": "EdDSA", "kid": 5}, {"exp": 4102444800}),
        ({"alg": "none"}, {"exp": 4102444800}),
        ({"alg": "EdDSA"}, {"exp": "4102444800", "nbf": None}),
        ({"alg": "EdDSA"}, [1, 2, 3]),
    ]:
        body = json.dumps(payload, separators=(",", ":"))
        put(d, body if header is None else json.dumps(header, separators=(",", ":")) + "\n" + body)
    edkey = jwk.JWK(**ed["input"]["key"])
    put(d, sign(edkey, {"alg": "EdDSA", "typ": "JWT"}, claims[0]))
    put(d, sign(edkey, {"alg": "EdDSA"}, claims[1]))


JSON_SEEDS = [
    # POST /token (issue_parse_body), the unit tests' bodies
    '{"subject":"alice","audience":"api","scope":"read write","expires_in":600}',
    '{"token_type":"refresh","subject":"alice","client_id":"web","scope":"read"}',
    '{"token_type":"id","subject":"alice","client_id":"web","nonce":"n-0S6_WzA2Mj","auth_time":1699999000}',
    '{"subject":"svc","org":"acme","roles":["tokens:issue","tokens:read"],"claims":{"tier":"gold","n":[1,2.5,null,true]}}',
    '{"subject":"s","alg":"EdDSA","expires_in":1}',
    '{"subject":"s","name":"ci token","description":"for the nightly build","expires_in":2592000}',
    '{"subject":"s","expires_in":-5}',
    '{"subject":"s","expires_in":1e309}',
    '{"subject":"s","expires_in":99999999999999999999999}',
    # POST /token-pairs
    '{"subject":"batch","parent_expires_in":86400,"child_expires_in":900,"include_child":true,"auto_renew":true}',
    # token endpoint grants (grant_parse)
    '{"grant_type":"refresh_token","refresh_token":"eyJhbGciOiJFUzI1NiJ9.e30.c2ln","scope":"read"}',
    '{"grant_type":"authorization_code","code":"SplxlOBeZQQYbYS6WxSbIA","redirect_uri":"https://client.example.org/cb",'
    '"client_id":"s6BhdRkqt3","code_verifier":"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"}',
    '{"grant_type":"password","username":"u","password":"p"}',
    # POST /codes (grant_parse_codes_body)
    '{"subject":"alice","client_id":"s6BhdRkqt3","redirect_uri":"https://client.example.org/cb",'
    '"code_challenge":"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM","code_challenge_method":"S256",'
    '"scope":"openid profile","nonce":"xyz","auth_time":1699999000,"org":"acme"}',
    # strict JSON edge cases
    '{"a":1,"a":2}',
    '{"a":"\\u0000"}',
    '{"k":"\\ud83d\\ude00 \\u00e9"}',
    '[' * 16 + ']' * 16,
    '[' * 17 + ']' * 17,
    '{"a":{"b":{"c":{"d":[1,{"e":-0.0}]}}}}',
    '"just a string"',
    '123',
    '{} {}',
    '{"x":1,}',
    # application/x-www-form-urlencoded (form_parse)
    'grant_type=refresh_token&refresh_token=abc.def.ghi&scope=read+write',
    'grant_type=authorization_code&code=SplxlOBeZQQYbYS6WxSbIA&redirect_uri=https%3A%2F%2Fclient.example.org%2Fcb'
    '&client_id=s6BhdRkqt3&code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk',
    'token=abc&token_type_hint=access_token',
    'a=1&&b=2&',
    'a&b=%zz',
    'a=1&a=2',
    'x=%00',
    'k=%C3%A9&e=%FF',
]


def json_corpus():
    d = reset("json")
    for s in JSON_SEEDS:
        put(d, s)


def config_corpus():
    d = reset("config")
    sample = open(os.path.join(ROOT, "etc", "hsmjwt.conf.sample"), "rb").read()
    put(d, sample)
    put(d, b"listen = 127.0.0.1:8443, [::1]:8443\nadmin_listen = 127.0.0.1:9100\n"
           b"algorithms = ES256 EdDSA RS256 PS256 ES384 HS256\nrsa_bits = 4096\n"
           b"token = \"pkcs11:token=hsmjwt;serial=1234?pin-source=file:/etc/hsmjwt/pin\"\n"
           b"access_ttl = 600\nmax_ttl = 86400\nrenew_before = 60\nchild_ttl = 300\nleeway = 300\n"
           b"fsync = interval\nlog_level = debug\nworkers = 64\nmax_connections = 64\n")
    put(d, b"listen = systemd\nrotation_period = 0\npublish_ahead = 0\nrate_limit = 1000000\n"
           b"max_body = 1024\npin = 1234\n# comment\n\n")
    put(d, b"unknown_key = 1\n")
    put(d, b"rsa_bits = 2049\n")
    put(d, b"max_ttl = 315360001\n")
    put(d, b"issuer = \"unterminated\n")
    put(d, b"algorithms = none\n")


def slot(flags, slot_id, label, manufacturer=b"", model=b"", serial=b""):
    def pad(s):
        return s.ljust(32, b" ")[:32]
    return bytes([flags]) + struct.pack("<Q", slot_id) + pad(label) + pad(manufacturer) + pad(model) + pad(serial)


def token_select_corpus():
    d = reset("token_select")
    slots = (slot(0, 11, b"gamma", b"SoftHSM project", b"SoftHSM v2", b"S0")
             + slot(1, 12, b"alpha", b"SoftHSM project", b"SoftHSM v2", b"S1")
             + slot(1, 13, b"alpha beta", b"www.CardContact.de", b"Nitrokey HSM", b"S2")
             + slot(1, 7, b"gamma", b"Yubico", b"YubiHSM", b"S4"))
    specs = [b"alpha", b"alpha beta", b"gamma", b"hsmjwt-dev", b"pkcs11:", b"pkcs11:token=alpha",
             b"pkcs11:token=alpha%20beta", b"pkcs11:serial=S4", b"pkcs11:model=Nitrokey%20HSM",
             b"pkcs11:manufacturer=Yubico;token=gamma", b"pkcs11:slot-id=13", b"pkcs11:slot-id=7;token=gamma",
             b"pkcs11:token=%zz", b"pkcs11:object=key;token=alpha",
             b"pkcs11:token=alpha?pin-source=file:/etc/hsmjwt/pin", b"pkcs11:token=t?pin-source=/run/pin",
             b"pkcs11:token=t?pin-source=relative", b"pkcs11:token=t?pin-value=1234",
             b"pkcs11:slot-description=x;slot-manufacturer=y;library-version=1.0"]
    for s in specs:
        put(d, s + b"\0" + slots)


def http_corpus():
    """fuzz_http: major, minor, then the target and "name:value" lines."""
    d = reset("http")
    for major, minor, lines in [
        (1, 1, ["/health", "Host:127.0.0.1:8080"]),
        (1, 1, ["/token", "Host:a", "Content-Type:application/json", "Content-Length:13"]),
        (1, 1, ["/token", "Host:a", "Transfer-Encoding:chunked"]),
        (1, 1, ["/token", "Host:a", "Content-Length:5", "Content-Length:6"]),
        (1, 1, ["/token", "Host:a", "Content-Length:+13"]),
        (1, 1, ["/token", "Host:a", "Transfer-Encoding:gzip, chunked"]),
        (1, 1, ["/health", "Host:a", "Host:b"]),
        (1, 1, ["/health"]),
        (1, 0, ["/health"]),
        (1, 1, ["http://127.0.0.1:8080/health?x=1", "Host:127.0.0.1"]),
        (1, 1, ["/tokens/../../etc/passwd", "Host:a"]),
        (1, 1, ["/health", "Host:a", "X-Test:a\x01b"]),
        (1, 1, ["/health", "Host :a"]),
        (1, 1, ["/" + "a" * 8200, "Host:a"]),
    ]:
        put(d, bytes([major, minor]) + "\n".join(lines).encode().decode("unicode_escape").encode("latin-1"))


def registry_corpus(build):
    d = reset("registry")
    subprocess.run([os.path.join(build, "tests", "fuzz", "seed_registry"), d], check=True)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_corpus.py BUILD_DIR (a build with HSMJWT_FUZZ=ON)")
    seeder = os.path.join(sys.argv[1], "tests", "fuzz", "seed_registry")
    if not os.access(seeder, os.X_OK):
        sys.exit("make_corpus.py: no %s (cmake --build %s --target seed_registry)" % (seeder, sys.argv[1]))
    jws_corpus()
    json_corpus()
    config_corpus()
    token_select_corpus()
    http_corpus()
    registry_corpus(sys.argv[1])


if __name__ == "__main__":
    main()
