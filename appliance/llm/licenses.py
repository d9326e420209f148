"""Open-model governance: a node runs only models whose licence the plant has allowed.

The point of this product is an auditable, open model. The GGUF `general.license` field is
what the model's publisher declared; a model without one, or with a licence outside the
configured list, is refused unless the operator explicitly allows unlisted licences.
"""

import logging
from dataclasses import dataclass

from appliance.config.model import DEFAULT_ALLOWED_LICENSES, ModelSettings
from appliance.errors import ModelError
from appliance.llm.gguf_file import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LicensePolicy:
    """Which declared model licences may be loaded."""

    allowed: tuple[str, ...] = DEFAULT_ALLOWED_LICENSES
    allow_unlisted: bool = False

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> "LicensePolicy":
        """The policy a node's `[model]` section configures."""
        return cls(tuple(settings.allowed_licenses), settings.allow_unlisted_license)

    def check(self, info: ModelInfo) -> None:
        """Raise `ModelError` if the model's licence is not allowed (and not overridden)."""
        allowed = tuple(name.lower() for name in self.allowed)
        if info.license in allowed:
            return
        declared = f"declares licence {info.license!r}" if info.license else "declares no licence"
        problem = (
            f"{info.path}: model {declared} (GGUF general.license); allowed licences are "
            f"{', '.join(allowed)}"
        )
        if self.allow_unlisted:
            log.warning("%s; loading anyway because allow_unlisted_license is set", problem)
            return
        raise ModelError(
            f"{problem}. Add it to model.allowed_licenses or set "
            "model.allow_unlisted_license = true if the plant has reviewed it"
        )
