"""Turn data records into the token sequences a model is trained and evaluated on.

A prompt/completion record is rendered with the model's own chat template (from its GGUF
metadata, applied by llama.cpp) so the adapter learns the format the model is served with;
the template's markers are tokenized as the special tokens they are. A model without a
template (the tiny test model) gets the prompt and the completion on consecutive lines.
"""

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path

from appliance.data.records import Record
from appliance.errors import ModelError
from appliance.llm.gguf_file import field_value, open_gguf
from appliance.llm.native import lib

log = logging.getLogger(__name__)

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def chat_template(model_path: Path) -> str | None:
    """The model's chat template, or None when it has none."""
    value = field_value(open_gguf(model_path, ModelError), CHAT_TEMPLATE_KEY)
    return value if isinstance(value, str) and value.strip() else None


def record_text(record: Record, template: str | None) -> str:
    """The text a record stands for, in the model's chat format where it has one."""
    if record.text is not None:
        return record.text
    prompt, completion = record.prompt or "", record.completion or ""
    if template is None:
        return f"{prompt}\n{completion}"
    rendered = apply_chat_template(
        template, [("user", prompt), ("assistant", completion)], add_assistant=False
    )
    if rendered is None:
        log.warning("llama.cpp does not know this chat template; using plain prompt/completion")
        return f"{prompt}\n{completion}"
    return rendered


def apply_chat_template(
    template: str, messages: Sequence[tuple[str, str]], add_assistant: bool = True
) -> str | None:
    """Render `messages` with a template (Jinja text or built-in name); None if unknown.

    `add_assistant` appends the assistant turn's opening, for prompting a reply; training
    records already hold the assistant's answer and leave it off.
    """
    keep = [(role.encode(), content.encode()) for role, content in messages]
    chat = (lib.llama_chat_message * max(len(keep), 1))(
        *[lib.llama_chat_message(r, c) for r, c in keep]
    )
    size = 2 * sum(len(r) + len(c) for r, c in keep) + 256
    for _ in range(2):
        buffer = ctypes.create_string_buffer(size)
        needed = lib.llama_chat_apply_template(
            template.encode(), chat, len(keep), add_assistant, buffer, size
        )
        if needed < 0:
            return None
        if needed <= size:
            return buffer.raw[:needed].decode("utf-8", errors="replace")
        size = needed
    return None


def tokenize(model: ctypes.c_void_p | int, text: str, add_bos: bool = True) -> list[int]:
    """Token ids of `text`, special tokens (chat markers) included, BOS first if `add_bos`."""
    vocab = lib.llama_model_get_vocab(model)
    data = text.encode("utf-8")
    capacity = len(data) + 8
    for _ in range(2):
        out = (lib.llama_token * capacity)()
        count = lib.llama_tokenize(vocab, data, len(data), out, capacity, add_bos, True)
        if count >= 0:
            return list(out[:count])
        capacity = -count
    raise ModelError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
