"""ManageSieve (RFC 5804): the service that lets mail clients upload and activate Sieve scripts."""
