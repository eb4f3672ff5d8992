from kami.kernel.errors import KamiError


class KeyringError(KamiError):
    """The master keyring is missing, malformed, or lacks a version the data needs."""

    status = 500
    slug = "keyring"
    title = "Master key problem"
