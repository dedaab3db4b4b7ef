"""The SMTP server engine shared by the MSA (587/465) and the MTA (25): grammar, DATA, protocol."""
