"""Mail authentication: DKIM signing, Authentication-Results, DMARC reports, DNS records."""
