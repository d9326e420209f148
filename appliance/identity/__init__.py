"""Who signed what: Ed25519 node keys, key files and the trust store of peers' public keys.

Every artifact manifest and control message a node sends is signed with its own key; a
receiver accepts it only when the signer's public key is in its trust store *and* the signer
is the node named in the MQTT topic. Federation reuses the same helpers.
"""

from appliance.identity.keys import NodeKey, generate_key_pair, load_public_key
from appliance.identity.trust import BadSignatureError, TrustStore, UnknownSignerError

__all__ = [
    "BadSignatureError",
    "NodeKey",
    "TrustStore",
    "UnknownSignerError",
    "generate_key_pair",
    "load_public_key",
]
