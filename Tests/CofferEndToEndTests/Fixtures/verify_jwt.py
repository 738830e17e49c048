#!/usr/bin/python3
# An independent JWT verifier for the end-to-end tests: PyJWT (Debian python3-jwt)
# with cryptography, nothing of Coffer's. Verifies the signature against the JWKS
# (found by the token's kid), the audience, the issuer, exp and nbf, and requires the
# registered claims. Prints the claims (exit 0) or "REFUSED: reason" (exit 2).
#   verify_jwt.py JWKS_FILE TOKEN AUDIENCE ISSUER [no-exp]
import json
import sys

import jwt

jwks_path, token, audience, issuer = sys.argv[1:5]
check_exp = not (len(sys.argv) > 5 and sys.argv[5] == "no-exp")
try:
    with open(jwks_path) as f:
        jwks = jwt.PyJWKSet.from_dict(json.load(f))
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [k for k in jwks.keys if k.key_id == kid]
    if not keys:
        print("REFUSED: no key with kid %s in the JWKS" % kid)
        sys.exit(2)
    claims = jwt.decode(
        token, keys[0].key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
        options={"require": ["exp", "nbf", "iat", "aud", "iss", "sub", "jti"], "verify_exp": check_exp})
    print(json.dumps(claims, sort_keys=True))
except jwt.PyJWTError as e:
    print("REFUSED: %s: %s" % (type(e).__name__, e))
    sys.exit(2)
