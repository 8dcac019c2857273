"""The HTTP surfaces: the merchant API, the public checkout and the live channels."""
