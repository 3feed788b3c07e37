"""Replays what Vault's and OpenBao's Transit seal client sends, with hvac (the Python Vault client).

    python3 hvac_seal_client.py URL TOKEN CA_FILE [CLIENT_CERT CLIENT_KEY]

Exits non-zero with a message on the first difference from Vault's behaviour.
"""
import base64
import sys

import hvac

url, token, ca = sys.argv[1], sys.argv[2], sys.argv[3]
cert = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else None
client = hvac.Client(url=url, token=token, verify=ca, cert=cert)


def check(cond, what):
    if not cond:
        sys.exit(f"hvac compatibility: {what}")


# 1. The seal client's start: renew-self with increment 0 (unless disable_renewal) ...
resp = client.adapter.put("/v1/auth/token/renew-self", json={"increment": 0})
auth = resp.json()["auth"] if hasattr(resp, "json") else resp["auth"]
check(auth["renewable"] is True, f"renew-self: {auth}")
check(auth["lease_duration"] > 0, f"renew-self lease_duration: {auth}")
check(client.auth.token.renew_self()["auth"]["accessor"] == auth["accessor"], "hvac renew_self")

# ... then one test encrypt of "a", and its decrypt.
enc = client.secrets.transit.encrypt_data(
    name="vault-prod", plaintext=base64.b64encode(b"a").decode(), mount_point="transit"
)
ct = enc["data"]["ciphertext"]
check(ct.startswith("vault:v1:") and len(ct.split(":")) == 3, f"ciphertext {ct}")
dec = client.secrets.transit.decrypt_data(name="vault-prod", ciphertext=ct, mount_point="transit")
check(base64.b64decode(dec["data"]["plaintext"]) == b"a", f"decrypt: {dec}")

# The seal client's steady state: wrap and unwrap a 32-byte key.
key = bytes(range(32))
ct = client.secrets.transit.encrypt_data(
    name="vault-prod", plaintext=base64.b64encode(key).decode(), mount_point="transit"
)["data"]["ciphertext"]
pt = client.secrets.transit.decrypt_data(name="vault-prod", ciphertext=ct, mount_point="transit")
check(base64.b64decode(pt["data"]["plaintext"]) == key, "32-byte round trip")

# Token lookup, key metadata.
me = client.auth.token.lookup_self()["data"]
check(me["policies"] == ["prod"] and me["renewable"] is True, f"lookup_self: {me}")
meta = client.secrets.transit.read_key(name="vault-prod", mount_point="transit")["data"]
check(meta["type"] == "aes256-gcm96" and meta["latest_version"] == 1, f"read_key: {meta}")

# A key the token may not use: hvac raises Forbidden (403).
try:
    client.secrets.transit.encrypt_data(name="vault-staging", plaintext="YQ==", mount_point="transit")
    sys.exit("hvac compatibility: vault-staging was allowed")
except hvac.exceptions.Forbidden:
    pass

# sys/health and sys/seal-status as hvac reads them.
health = client.sys.read_health_status(method="GET")
check(health["initialized"] is True and health["sealed"] is False, f"health: {health}")
status = client.sys.read_seal_status()
check(status["type"] == "pkcs11" and status["recovery_seal"] is True and status["sealed"] is False, f"seal status: {status}")
check(client.sys.is_initialized() is True and client.sys.is_sealed() is False, "is_initialized / is_sealed")
print("hvac compatibility: ok")
