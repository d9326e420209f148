"""Identity failures an operator can act on (missing key, wrong permissions, bad file)."""

from appliance.errors import ApplianceError


class IdentityError(ApplianceError):
    """A key file or trust store cannot be used; the message names the file and the reason."""
