"""Update codec: delta to the global adapter, compressed, in a versioned self-describing blob.

`encode_update` / `decode_update` are the whole interface; `ErrorFeedback` keeps what lossy
compression dropped on the box and adds it to the next update.
"""

from appliance.federation.codec.feedback import ErrorFeedback
from appliance.federation.codec.format import (
    CodecSpec,
    DecodeError,
    EncodedUpdate,
    RoundContext,
    UpdateHeader,
    decode_update,
    encode_update,
)

__all__ = [
    "CodecSpec",
    "DecodeError",
    "EncodedUpdate",
    "ErrorFeedback",
    "RoundContext",
    "UpdateHeader",
    "decode_update",
    "encode_update",
]
