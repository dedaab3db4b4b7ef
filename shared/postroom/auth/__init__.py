"""Authentication: password hashing, SASL mechanisms, credential checkers and login rate limits."""
