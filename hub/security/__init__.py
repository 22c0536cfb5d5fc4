"""Certificates, TLS credentials and the identity an agent's certificate carries."""
